"""A loopback ESP that implements docs/esp-contract.md, with seeded fault injection.

Built on ``http.server.ThreadingHTTPServer`` (plus orjson for the bodies) so
the demo and the tests talk real HTTP to it. Every accepted recipient is
recorded (campaign, run, idempotency key, customer, address, seed flag) in
SQLite, and every accepted batch with its ``send_at`` and template, so a test
can prove exactly-once: a recipient accepted under two different keys shows up
with a count of 2, never hidden.

Request bodies carry addresses: they are never logged. The access log is off by
default (``quiet=True``) and, when on, prints only the request line.

People point adapters at it, so it holds up against a hostile client (the limits
are in :class:`Limits` and the contract's "Limits" section): the path, the token
and the headers are checked before a byte of the body is read, a body larger
than the limit is refused unread, every field of a batch is bounded, and a
request must arrive whole within ``read_timeout`` seconds of its first byte.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import math
import os
import random
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime
from http import HTTPStatus
from http.client import HTTPException, LineTooLong
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

_BATCHES_PATH = re.compile(r"^/v1/campaigns/([^/]+)/batches$")
_SMS_BATCHES_PATH = re.compile(r"^/v1/campaigns/([^/]+)/sms/batches$")
_RUN_PATH = re.compile(r"^/v1/campaigns/([^/]+)/runs/([^/]+)$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")+$")
MAX_ADDRESS_CHARS = 254  # RFC 5321's longest address; a longer one is rejected, never stored
_RECIPIENT_KEYS = {"customer_id", "address", "cell", "offer_code", "fields", "seed"}
_SMS_RECIPIENT_KEYS = {"customer_id", "phone", "cell", "offer_code", "fields", "seed", "send_at", "segments"}
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_SMS_TEXT = 1600  # characters of an SMS batch's text (ten GSM-7 parts)
MAX_SMS_SEGMENTS = 10
_CONFLICT_RETRY_AFTER = 1  # seconds a client should wait on 409
_BUSY_RETRY_AFTER = 1  # seconds a client should wait on a 429 for too many bodies at once
_STR_OR_NONE = (str, type(None))
_NUMBERS_OR_NONE = (int, float, bool, type(None))
_INT64 = (-(2**63), 2**63 - 1)  # what the delivery store (SQLite INTEGER) holds
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,19}$")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# JSON bytes one character can take (a control character escaped as \u0000).
_MAX_BYTES_PER_CHAR = 6
# The keys, numbers and punctuation of a batch of one recipient, with room to spare.
_BATCH_OVERHEAD = 400
MAX_SEND_AT_CHARS = 64


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how long it may take (docs/esp-contract.md, "Limits").

    Sizes are in bytes, lengths in characters, times in seconds. A body over
    ``max_body_bytes`` gets 413 (the contract's "batch too large": the client
    splits it); a field over its bound gets 400 naming the field.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_inflight_body_bytes: int = 16 * 1024 * 1024  # bodies held at once, all connections
    max_header_bytes: int = 32 * 1024  # the request line and headers together
    read_timeout: float = 5.0  # a request must arrive whole within this of its first byte
    idle_timeout: float = 10.0  # a kept-alive connection waits this long for its next request
    max_connections: int = 64  # open connections at once; more get 503 at once
    max_id_chars: int = 64  # run_id, cell, offer_code
    max_template_chars: int = 256
    max_fields: int = 32  # personalisation fields per recipient
    max_field_name_chars: int = 64
    max_field_value_chars: int = 1000

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"Limits.{f.name} must be > 0")
        if self.max_body_bytes < self.largest_recipient_bytes():
            raise ValueError(
                f"Limits.max_body_bytes must be at least {self.largest_recipient_bytes()} (a "
                "batch of one recipient with every field at its limit), so that halving a "
                "batch on 413 always ends"
            )
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError("Limits.max_inflight_body_bytes must be >= max_body_bytes")

    def largest_recipient_bytes(self) -> int:
        """The JSON size of a batch of one recipient with every field at its limit (either channel)."""
        chars = (
            self.max_id_chars * 3  # run_id, cell, offer_code
            + self.max_template_chars
            + MAX_SEND_AT_CHARS
            + MAX_ADDRESS_CHARS
            + MAX_SMS_TEXT + MAX_SEND_AT_CHARS  # an SMS batch's text and a recipient's send_at
            + self.max_fields * (self.max_field_name_chars + self.max_field_value_chars)
        )
        return chars * _MAX_BYTES_PER_CHAR + _BATCH_OVERHEAD + 8 * self.max_fields

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    campaign_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    batch_seq INTEGER NOT NULL,
    body_sha TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL,
    send_at TEXT,
    template_id TEXT,
    channel TEXT NOT NULL DEFAULT 'email',
    segments INTEGER,
    PRIMARY KEY (campaign_id, idem_key)
);
CREATE INDEX IF NOT EXISTS ix_batches_run ON batches (campaign_id, run_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    customer_id INTEGER,
    address TEXT NOT NULL,
    seed INTEGER NOT NULL,
    channel TEXT NOT NULL DEFAULT 'email',
    segments INTEGER,
    send_at TEXT
);
CREATE INDEX IF NOT EXISTS ix_deliveries_run ON deliveries (campaign_id, run_id);
"""


@dataclass
class Faults:
    """Fault probabilities (0..1), drawn from ``random.Random(seed)``.

    - ``rate_limit``: 429 with ``Retry-After: retry_after``, nothing stored.
    - ``error_before_store``: 503, nothing stored.
    - ``error_after_store``: the batch is stored, then the answer is 500.
    - ``drop_connection``: the batch is stored or not (50/50), then the socket
      is closed without any response.
    - ``latency_ms``: time spent processing a new batch (while its key is held,
      so a concurrent request with the same key gets 409).

    Faults hit new batches; a replay of an accepted key can only be rate limited.
    """

    rate_limit: float = 0.0
    error_before_store: float = 0.0
    error_after_store: float = 0.0
    drop_connection: float = 0.0
    latency_ms: int = 0
    seed: int = 0
    retry_after: int = 0

    def __post_init__(self) -> None:
        for name in ("rate_limit", "error_before_store", "error_after_store", "drop_connection"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Faults.{name} must be a probability between 0 and 1")
        if self.latency_ms < 0 or self.retry_after < 0:
            raise ValueError("Faults.latency_ms and Faults.retry_after must be >= 0")


class _BadRequest(Exception):
    """A malformed batch: the message names the field, never its value."""


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a JSON value (sorted keys, no spaces, UTF-8).

    orjson with sorted keys: for strings, integers, booleans and null these are
    the bytes of ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)``, about ten times faster.
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def is_valid_address(address: str) -> bool:
    """A syntactic check of an email address (what the sandbox rejects)."""
    return len(address) <= 254 and _ADDRESS.match(address) is not None


def max_commas(max_batch: int, limits: Limits, channel: str = "email") -> int:
    """The most commas outside strings a batch can hold: its JSON values, bounded before parsing."""
    if channel == "sms":  # two more top-level fields, two more per recipient
        return 6 + max_batch * (8 + limits.max_fields)
    return 4 + max_batch * (6 + limits.max_fields)


def _too_many_values(body: bytes, limit: int) -> bool:
    """More than `limit` commas outside JSON strings (counted on the raw bytes, strings dropped).

    Parsing multiplies memory by up to ~27 for tiny values (a million ``{}``): this
    bounds how many values a parse can make. The byte count is a quick upper bound;
    only a body past it (commas inside strings) is counted exactly.
    """
    return body.count(b",") > limit and _JSON_STRING.sub(b"", body).count(b",") > limit


def _is_int64(value: Any) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _text(value: Any, where: str, limit: int, *, empty: bool = False) -> None:
    """A string of at most `limit` characters (non-empty unless `empty`), else _BadRequest."""
    if not isinstance(value, str) or (not value and not empty):
        raise _BadRequest(f"{where}: must be a {'' if empty else 'non-empty '}string")
    if len(value) > limit:
        raise _BadRequest(f"{where}: longer than {limit} characters")


def _iso_time(value: Any, where: str) -> None:
    """An ISO-8601 time of at most MAX_SEND_AT_CHARS, else _BadRequest."""
    _text(value, where, MAX_SEND_AT_CHARS)
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"{where}: not an ISO-8601 time") from None


def _validate_head(body: Any, limits: Limits, extra: frozenset[str] = frozenset()) -> list[Any]:
    """The batch's fields other than the recipients, checked; its recipients (a non-empty list)."""
    if not isinstance(body, dict):
        raise _BadRequest("body: must be a JSON object")
    allowed = {"run_id", "batch_seq", "send_at", "template_id", "recipients", *extra}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _BadRequest(f"{unknown[0][:64]}: unknown field")
    _text(body.get("run_id"), "run_id", limits.max_id_chars)
    seq = body.get("batch_seq")
    if type(seq) is not int or not 0 <= seq <= _INT64[1]:
        raise _BadRequest(f"batch_seq: must be an integer from 0 to {_INT64[1]}")
    if "send_at" not in body:
        raise _BadRequest("send_at: required (an ISO-8601 time or null)")
    if body["send_at"] is not None:
        _iso_time(body["send_at"], "send_at")
    _text(body.get("template_id"), "template_id", limits.max_template_chars)
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise _BadRequest("recipients: must be a non-empty list")
    return recipients


def _validate(body: Any, limits: Limits) -> None:
    """Raise _BadRequest naming the first field of a batch that is malformed or over a limit."""
    recipients = _validate_head(body, limits)
    max_id, max_fields = limits.max_id_chars, limits.max_fields
    max_name, max_value = limits.max_field_name_chars, limits.max_field_value_chars
    for i, r in enumerate(recipients):
        # The common, well-formed recipient is checked with a few type and length tests;
        # only a failing one goes through the field-by-field diagnosis.
        if (
            type(r) is dict
            and r.keys() <= _RECIPIENT_KEYS
            and _is_int64(r.get("customer_id"))
            and type(r.get("address")) is str
            and type(cell := r.get("cell")) in _STR_OR_NONE
            and (cell is None or len(cell) <= max_id)
            and type(offer := r.get("offer_code")) in _STR_OR_NONE
            and (offer is None or len(offer) <= max_id)
            and type(r.get("seed", False)) is bool
        ):
            values = r.get("fields")
            if values is None and "fields" not in r:
                continue
            if _fields_within(values, max_fields, max_name, max_value):
                continue
        _diagnose(i, r, limits)


def _fields_within(values: Any, max_fields: int, max_name: int, max_value: int) -> bool:
    """A personalisation object of scalars within the limits (the quick check; a plain loop
    is the fastest form in CPython)."""
    if type(values) is not dict or len(values) > max_fields:
        return False
    for name, value in values.items():
        if len(name) > max_name:
            return False
        if type(value) is str:
            if len(value) > max_value:
                return False
        elif type(value) not in _NUMBERS_OR_NONE:
            return False
    return True


def _diagnose(i: int, r: Any, limits: Limits) -> None:
    """Raise _BadRequest naming the first bad field of recipients[i] (or return if fine)."""
    where = f"recipients[{i}]"
    if not isinstance(r, dict):
        raise _BadRequest(f"{where}: must be an object")
    extra = sorted(set(r) - _RECIPIENT_KEYS)
    if extra:
        raise _BadRequest(f"{where}.{extra[0][:64]}: unknown field")
    if "customer_id" not in r or not (r["customer_id"] is None or _is_int64(r["customer_id"])):
        raise _BadRequest(f"{where}.customer_id: must be a 64-bit integer or null")
    if not isinstance(r.get("address"), str):
        raise _BadRequest(f"{where}.address: must be a string")
    for key in ("cell", "offer_code"):
        if r.get(key) is not None:
            _text(r[key], f"{where}.{key}", limits.max_id_chars, empty=True)
    values = r.get("fields", {})
    if not isinstance(values, dict):
        raise _BadRequest(f"{where}.fields: must be an object")
    if len(values) > limits.max_fields:
        raise _BadRequest(f"{where}.fields: more than {limits.max_fields} fields")
    for name, value in values.items():
        if len(name) > limits.max_field_name_chars:
            raise _BadRequest(
                f"{where}.fields: a field name is longer than {limits.max_field_name_chars} characters"
            )
        if isinstance(value, str):
            _text(value, f"{where}.fields.{name}", limits.max_field_value_chars, empty=True)
        elif value is not None and not isinstance(value, int | float | bool):
            raise _BadRequest(f"{where}.fields.{name}: must be a scalar")
    if not isinstance(r.get("seed", False), bool):
        raise _BadRequest(f"{where}.seed: must be a boolean")
    if r.get("customer_id") is None and not r.get("seed", False):
        raise _BadRequest(f"{where}.customer_id: required unless seed is true")


def _validate_sms(body: Any, limits: Limits) -> None:
    """Raise _BadRequest naming the first field of an SMS batch that is malformed or over a limit."""
    recipients = _validate_head(body, limits, frozenset(("text", "max_segments")))
    _text(body.get("text"), "text", MAX_SMS_TEXT)
    most = body.get("max_segments")
    if type(most) is not int or not 1 <= most <= MAX_SMS_SEGMENTS:
        raise _BadRequest(f"max_segments: must be an integer from 1 to {MAX_SMS_SEGMENTS}")
    for i, r in enumerate(recipients):
        where = f"recipients[{i}]"
        if not isinstance(r, dict):
            raise _BadRequest(f"{where}: must be an object")
        extra = sorted(set(r) - _SMS_RECIPIENT_KEYS)
        if extra:
            raise _BadRequest(f"{where}.{extra[0][:64]}: unknown field")
        if not isinstance(r.get("phone"), str):
            raise _BadRequest(f"{where}.phone: must be a string")
        if r.get("send_at") is not None:
            _iso_time(r["send_at"], f"{where}.send_at")
        declared = r.get("segments")
        if declared is not None and (type(declared) is not int or not 1 <= declared <= MAX_SMS_SEGMENTS):
            raise _BadRequest(f"{where}.segments: must be an integer from 1 to {MAX_SMS_SEGMENTS}")
        mail = {k: v for k, v in r.items() if k not in ("phone", "send_at", "segments")}
        _diagnose(i, {**mail, "address": ""}, limits)


class _HeadersTooLarge(LineTooLong):
    """The request line and headers went past Limits.max_header_bytes."""

    def __init__(self, limit: int) -> None:
        HTTPException.__init__(self, f"request line and headers: more than {limit} bytes")


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by what is left of a deadline and of a byte budget.

    A per-read socket timeout alone lets a client that sends a byte now and then hold
    a connection for ever; here every read waits at most until ``deadline``, so a
    request arrives whole within ``read_timeout`` of its first byte or the read fails
    with TimeoutError. ``budget`` (bytes, ``None`` = no bound) caps the headers.
    """

    def __init__(self, sock: socket.socket, header_limit: int) -> None:
        super().__init__()
        self._sock = sock
        self._header_limit = header_limit
        self.deadline = math.inf
        self.budget: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        view = memoryview(buffer).cast("B")
        if self.budget is not None:
            if self.budget <= 0:
                raise _HeadersTooLarge(self._header_limit)
            view = view[: self.budget]
        self._sock.settimeout(left)
        n = self._sock.recv_into(view)
        if self.budget is not None:
            self.budget -= n
        return n


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: EspSandbox) -> None:
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = len(self._open) >= self.sandbox.limits.max_connections
            if not full:
                self._open.add(request)
        if full:  # answered here, without a thread
            self.sandbox._count(None, "status_503")
            body = orjson.dumps({"error": "too many open connections: retry later"})
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and closed its socket is normal here: stay quiet.
        if not self.sandbox.quiet:
            exc = sys.exc_info()[1]
            sys.stderr.write(f"esp-sandbox: connection error {type(exc).__name__}\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "campaignops-esp-sandbox/1"
    wbufsize = 64 * 1024  # headers and body leave in one write
    server: _Server

    def setup(self) -> None:
        self.limits = self.server.sandbox.limits
        super().setup()
        self.connection.settimeout(self.limits.read_timeout)  # reads reset it; bounds writes
        # Small request/response pairs on a kept-alive connection: without this,
        # Nagle plus delayed ACKs add ~40 ms to every exchange.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection, self.limits.max_header_bytes)
        self.rfile.close()  # the plain reader setup() made: reads go through the deadline
        self._buffered = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._buffered

    def handle_one_request(self) -> None:
        """Wait for a request (idle timeout), then give it ``read_timeout`` to arrive whole."""
        reader = self._reader
        reader.budget = self.limits.max_header_bytes  # counted from the request's first byte
        reader.deadline = time.monotonic() + self.limits.idle_timeout
        try:
            if not self._buffered.peek(1):  # the client closed the connection
                self.close_connection = True
                return
        except OSError:  # idle too long (TimeoutError), or reset
            self.close_connection = True
            return
        reader.deadline = time.monotonic() + self.limits.read_timeout
        try:
            super().handle_one_request()
        except _HeadersTooLarge as exc:  # in the request line (parse_request answers the rest)
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, str(exc))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's protocol errors (bad request line, 414, 431, 501) as JSON; then close."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # unparsed: still answer with a status line
        self._error(code, explain or message or phrase)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Only the request line and status (never bodies, never headers).
        if not self.server.sandbox.quiet:
            sys.stderr.write(f"esp-sandbox: {self.address_string()} {format % args}\n")

    # -- plumbing ---------------------------------------------------------
    def _send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._status = status
        data = orjson.dumps(payload)
        try:
            self.connection.settimeout(self.limits.read_timeout)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, headers)

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer without reading the body, then close (the unread body is no next request)."""
        self.close_connection = True
        self._error(status, message, headers)

    def _authorized(self) -> bool:
        expected = f"Bearer {self.server.sandbox._token}".encode()
        got = (self.headers.get("Authorization") or "").encode()
        return hmac.compare_digest(got, expected)

    def _body_length(self) -> int | None:
        """The declared body size, after refusing (and returning None) what cannot be read."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._refuse(411, "Transfer-Encoding: not accepted; send the body with Content-Length")
            return None
        declared = self.headers.get_all("Content-Length") or []
        if len(declared) > 1:
            self._refuse(400, "Content-Length: given more than once")
            return None
        if not declared or not _CONTENT_LENGTH.match(declared[0].strip()):
            self._refuse(411, "Content-Length: required (a number of bytes)")
            return None
        n = int(declared[0])
        limit = self.limits.max_body_bytes
        if n > limit:
            self._refuse(
                413, f"body: {n} bytes, more than the {limit} a batch may have: "
                "send fewer recipients per batch"
            )
            return None
        return n

    def _read_body(self, n: int) -> bytes | None:
        """Exactly n bytes of body within the request's deadline, else refuse and return None."""
        self._reader.budget = None
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            self._refuse(
                408, f"body: not received within {self.limits.read_timeout:g} s "
                "(is Content-Length right?)"
            )
            return None
        if len(body) < n:  # the client closed early: nobody to answer
            self.close_connection = True
            return None
        return body

    # -- routes -----------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send_json(200, {"ok": True})
            return
        m = _RUN_PATH.match(path)
        if not m:
            self._error(404, "not found")
            return
        if not self._authorized():
            self._error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            return
        summary = self.server.sandbox.run_summary(unquote(m.group(1)), unquote(m.group(2)))
        self._send_json(200, summary)

    def do_POST(self) -> None:  # noqa: N802
        # Everything that needs no body is checked before a byte of it is read.
        sandbox = self.server.sandbox
        path = urlsplit(self.path).path
        sms = _SMS_BATCHES_PATH.match(path)
        m = sms or _BATCHES_PATH.match(path)
        if not m:
            self._refuse(404, "not found")
            return
        channel = "sms" if sms else "email"
        campaign_id = unquote(m.group(1))
        sandbox._count(None, "requests")
        if not self._authorized():
            sandbox._count(None, "status_401")
            self._refuse(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            return
        key = (self.headers.get("Idempotency-Key") or "").strip()
        if not key or len(key) > 255:
            sandbox._count(None, "status_400")
            self._refuse(400, "Idempotency-Key: header required (1-255 characters)")
            return
        n = self._body_length()
        if n is None:
            sandbox._count(None, f"status_{self._status}")
            return
        if not sandbox._hold(n):
            sandbox._count(None, "status_429")
            self._refuse(
                429, "too many batches in progress at once: retry later",
                {"Retry-After": str(_BUSY_RETRY_AFTER)},
            )
            return
        try:
            body = self._read_body(n)
            if body is not None:
                self._batch(campaign_id, key, body, channel)
        finally:
            sandbox._release(n)

    def _batch(self, campaign_id: str, key: str, body: bytes, channel: str) -> None:
        sandbox = self.server.sandbox
        if _too_many_values(body, max_commas(sandbox.max_batch, self.limits, channel)):
            sandbox._count(None, "status_413")
            self._error(
                413, f"body: more JSON values than {sandbox.max_batch} recipients of at most "
                f"{self.limits.max_fields} fields can have: send fewer recipients per batch"
            )
            return
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            sandbox._count(None, "status_400")
            self._error(400, "body: not valid JSON")
            return
        run_id = parsed.get("run_id") if isinstance(parsed, dict) else None
        run = run_id if isinstance(run_id, str) and len(run_id) <= self.limits.max_id_chars else None
        sandbox._count_run(run, "requests")
        recipients = parsed.get("recipients") if isinstance(parsed, dict) else None
        if isinstance(recipients, list) and len(recipients) > sandbox.max_batch:
            sandbox._count(run, "status_413")
            self._error(
                413, f"recipients: {len(recipients)} in one batch, at most {sandbox.max_batch}"
            )
            return
        try:
            (_validate_sms if channel == "sms" else _validate)(parsed, self.limits)
        except _BadRequest as exc:
            sandbox._count(run, "status_400")
            self._error(400, str(exc))
            return
        status, payload, headers = sandbox._process(campaign_id, key, parsed, channel)
        if status == 0:  # dropped connection: no response at all
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send_json(status, payload, headers)


class EspSandbox:
    """The contract's ESP on loopback: ``EspSandbox(token).start()`` then ``.url``."""

    def __init__(
        self,
        token: str,
        db_path: str | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 1000,
        quiet: bool = True,
        limits: Limits | None = None,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._token = token
        self.faults = faults or Faults()
        self.max_batch = max_batch
        self.limits = limits or Limits()
        self._inflight_bytes = 0
        self.quiet = quiet
        self.host = host
        self.port = port
        self.url = ""
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path or ":memory:", check_same_thread=False)
        if db_path:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        # A delivery file from an older sandbox lacks the batch's send time and template.
        have = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        for column in ("send_at", "template_id"):
            if column not in have:
                self._db.execute(f"ALTER TABLE batches ADD COLUMN {column} TEXT")
        # ... and an SMS batch's channel and segments (and a recipient's own send time).
        for table, column, kind in (("batches", "channel", "TEXT NOT NULL DEFAULT 'email'"),
                                    ("batches", "segments", "INTEGER"),
                                    ("deliveries", "channel", "TEXT NOT NULL DEFAULT 'email'"),
                                    ("deliveries", "segments", "INTEGER"),
                                    ("deliveries", "send_at", "TEXT")):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._processing: dict[tuple[str, str], str] = {}
        self._counters: dict[str | None, Counter[str]] = {None: Counter()}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"EspSandbox(url={self.url!r}, max_batch={self.max_batch}, faults={self.faults!r}, "
                f"limits={self.limits!r})")

    # -- lifecycle --------------------------------------------------------
    def _bind(self) -> _Server:
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server = server
        return server

    def start(self) -> EspSandbox:
        """Serve in a daemon thread; returns self (``url`` is set)."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="esp-sandbox", daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the foreground until interrupted (for the CLI)."""
        server = self._server or self._bind()
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            server.close_open_connections()
            self._server = None

    def stop(self) -> None:
        """Stop serving, close open connections and the delivery store."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._db.close()

    def __enter__(self) -> EspSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection (tests) -------------------------------------------------
    def deliveries(self, campaign_id: str, run_id: str) -> dict[str, int]:
        """Times each recipient was accepted, keyed by customer_id (seeds: address)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT COALESCE(CAST(customer_id AS TEXT), address), COUNT(*) FROM deliveries "
                "WHERE campaign_id = ? AND run_id = ? "
                "GROUP BY COALESCE(CAST(customer_id AS TEXT), address)",
                (campaign_id, run_id),
            ).fetchall()
        return {k: n for k, n in rows}

    def sms_rows(self, campaign_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every recorded SMS delivery (key, customer_id, phone, seed, segments, send_at), in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idem_key, customer_id, address, seed, segments, send_at FROM deliveries "
                "WHERE campaign_id = ? AND run_id = ? AND channel = 'sms' ORDER BY id",
                (campaign_id, run_id),
            ).fetchall()
        return [{"key": k, "customer_id": c, "phone": a, "seed": bool(s), "segments": n, "send_at": t}
                for k, c, a, s, n, t in rows]

    def delivery_rows(self, campaign_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every recorded delivery (key, customer_id, address, seed), in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idem_key, customer_id, address, seed FROM deliveries "
                "WHERE campaign_id = ? AND run_id = ? ORDER BY id",
                (campaign_id, run_id),
            ).fetchall()
        return [
            {"key": k, "customer_id": c, "address": a, "seed": bool(s)} for k, c, a, s in rows
        ]

    def batches(self, campaign_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every accepted batch of a run (key, seq, send_at, template, counts), by seq then key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idem_key, batch_seq, send_at, template_id, accepted, rejected FROM batches "
                "WHERE campaign_id = ? AND run_id = ? ORDER BY batch_seq, idem_key",
                (campaign_id, run_id),
            ).fetchall()
        return [
            {"key": k, "batch_seq": q, "send_at": s, "template_id": t, "accepted": a, "rejected": r}
            for k, q, s, t, a, r in rows
        ]

    def run_summary(self, campaign_id: str, run_id: str) -> dict[str, int]:
        """What GET .../runs/{run_id} answers: counts over distinct accepted keys."""
        with self._lock:
            batches, accepted, rejected, sms, billed = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(accepted), 0), COALESCE(SUM(rejected), 0), "
                "COALESCE(SUM(channel = 'sms'), 0), COALESCE(SUM(segments), 0) "
                "FROM batches WHERE campaign_id = ? AND run_id = ?",
                (campaign_id, run_id),
            ).fetchone()
        summary = {"batches": batches, "accepted": accepted, "rejected": rejected}
        if sms:  # an SMS run's summary also says how many segments the ESP bills
            summary["segments"] = billed
        return summary

    def stats(self, run_id: str | None = None) -> dict[str, int]:
        """Counters: requests, status_NNN, replays, fault_* (all, or one run's)."""
        with self._lock:
            return dict(self._counters.get(run_id, Counter()))

    # -- internals --------------------------------------------------------
    def _count(self, run_id: str | None, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[None][name] += n
            if run_id is not None:
                self._counters.setdefault(run_id, Counter())[name] += n

    def _hold(self, n: int) -> bool:
        """Reserve n bytes of the body budget (Limits.max_inflight_body_bytes), or say no."""
        with self._lock:
            if self._inflight_bytes + n > self.limits.max_inflight_body_bytes:
                return False
            self._inflight_bytes += n
            return True

    def _release(self, n: int) -> None:
        with self._lock:
            self._inflight_bytes -= n

    def _count_run(self, run_id: str | None, name: str) -> None:
        if run_id is not None:
            with self._lock:
                self._counters.setdefault(run_id, Counter())[name] += 1

    def _draw(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._lock:
            return self._rng.random() < p

    def _process(
        self, campaign_id: str, key: str, body: dict[str, Any], channel: str = "email"
    ) -> tuple[int, Any, dict[str, str]]:
        """Idempotency, faults and storage for one valid batch. Status 0 = drop."""
        run_id: str = body["run_id"]
        f = self.faults
        if self._draw(f.rate_limit):
            self._count(run_id, "fault_rate_limit")
            self._count(run_id, "status_429")
            return 429, {"error": "rate limited"}, {"Retry-After": str(f.retry_after)}
        # The endpoint is part of what a key names: the same body posted to the other
        # channel's endpoint under the same key is another request (422), never a replay.
        sha = hashlib.sha256(canonical_json(body) + (b"" if channel == "email" else b"\nsms")).hexdigest()
        ident = (campaign_id, key)
        with self._lock:
            row = self._db.execute(
                "SELECT body_sha, response FROM batches WHERE campaign_id = ? AND idem_key = ?",
                ident,
            ).fetchone()
            busy = self._processing.get(ident)
            if row is None and busy is None:
                self._processing[ident] = sha  # claimed
        if row is not None:
            if row[0] != sha:
                self._count(run_id, "status_422")
                return 422, {"error": "Idempotency-Key: reused with a different body"}, {}
            self._count(run_id, "replays")
            self._count(run_id, "status_202")
            return 202, orjson.loads(row[1]), {"Idempotent-Replayed": "true"}
        if busy is not None:
            if busy != sha:
                self._count(run_id, "status_422")
                return 422, {"error": "Idempotency-Key: reused with a different body"}, {}
            self._count(run_id, "status_409")
            return (
                409,
                {"error": "Idempotency-Key: a request with this key is still being processed"},
                {"Retry-After": str(_CONFLICT_RETRY_AFTER)},
            )
        try:
            if self._draw(f.error_before_store):
                self._count(run_id, "fault_error_before_store")
                self._count(run_id, "status_503")
                return 503, {"error": "temporarily unavailable"}, {}
            if f.latency_ms > 0:
                time.sleep(f.latency_ms / 1000)
            drop = self._draw(f.drop_connection)
            store = (not drop) or self._draw(0.5)
            after_error = (not drop) and self._draw(f.error_after_store)
            response: Any = None
            if store:
                response = (self._store_sms if channel == "sms" else self._store)(
                    campaign_id, key, sha, body)
            if drop:
                self._count(run_id, "fault_drop_stored" if store else "fault_drop_not_stored")
                return 0, None, {}
            if after_error:
                self._count(run_id, "fault_error_after_store")
                self._count(run_id, "status_500")
                return 500, {"error": "internal error"}, {}
            self._count(run_id, "status_202")
            self._count(run_id, "stored")
            return 202, response, {}
        finally:
            with self._lock:
                self._processing.pop(ident, None)

    def _store(self, campaign_id: str, key: str, sha: str, body: dict[str, Any]) -> Any:
        run_id: str = body["run_id"]
        accepted: list[tuple[Any, str, bool]] = []
        rejected: list[dict[str, Any]] = []
        for r in body["recipients"]:
            address: str = r["address"]
            if is_valid_address(address):
                accepted.append((r.get("customer_id"), address, r.get("seed", False)))
            else:
                rejected.append({"customer_id": r.get("customer_id"), "reason": "invalid_address"})
        batch_id = "b_" + hashlib.sha256(f"{campaign_id}\n{key}".encode()).hexdigest()[:20]
        response = {"batch_id": batch_id, "accepted": len(accepted), "rejected": rejected}
        with self._lock, self._db:
            # One statement for the whole batch (SQLite unpacks the JSON array): a row-by-row
            # executemany would hand the GIL back and forth once per recipient.
            self._db.execute(
                "INSERT INTO deliveries (campaign_id, run_id, idem_key, customer_id, address, seed) "
                "SELECT ?, ?, ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                "json_extract(value, '$[2]') FROM json_each(?)",
                (campaign_id, run_id, key, orjson.dumps(accepted).decode()),
            )
            self._db.execute(
                "INSERT INTO batches (campaign_id, idem_key, run_id, batch_seq, body_sha, batch_id, "
                "accepted, rejected, response, created_at, send_at, template_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    campaign_id, key, run_id, body["batch_seq"], sha, batch_id,
                    len(accepted), len(rejected), orjson.dumps(response).decode(), time.time(),
                    body["send_at"], body["template_id"],
                ),
            )
        return response


    def _store_sms(self, campaign_id: str, key: str, sha: str, body: dict[str, Any]) -> Any:
        """Store an SMS batch: each message rendered and counted in segments, as it is billed.

        A recipient is rejected (never stored) when the phone is not E.164
        (``invalid_phone``), when the message would take more than the batch's
        ``max_segments`` (``too_many_segments``), or when the client declared another
        segment count than the ESP counts (``segments_mismatch``).
        """
        from campaignops.sms import render, segments

        run_id: str = body["run_id"]
        text: str = body["text"]
        most: int = body["max_segments"]
        accepted: list[tuple[Any, str, bool, int, Any]] = []
        rejected: list[dict[str, Any]] = []
        for r in body["recipients"]:
            phone: str = r["phone"]
            values = {k: "" if v is None else str(v) for k, v in (r.get("fields") or {}).items()}
            n = segments(render(text, values))
            declared = r.get("segments")
            reason = ("invalid_phone" if not _E164.match(phone) else "too_many_segments" if n > most
                      else "segments_mismatch" if declared is not None and declared != n else None)
            if reason is None:
                accepted.append((r.get("customer_id"), phone, r.get("seed", False), n,
                                 r.get("send_at") or body["send_at"]))
            else:
                rejected.append({"customer_id": r.get("customer_id"), "reason": reason})
        billed = sum(a[3] for a in accepted)
        batch_id = "b_" + hashlib.sha256(f"{campaign_id}\n{key}".encode()).hexdigest()[:20]
        response = {"batch_id": batch_id, "accepted": len(accepted), "rejected": rejected,
                    "segments": billed}
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO deliveries (campaign_id, run_id, idem_key, customer_id, address, seed, "
                "channel, segments, send_at) "
                "SELECT ?, ?, ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                "json_extract(value, '$[2]'), 'sms', json_extract(value, '$[3]'), "
                "json_extract(value, '$[4]') FROM json_each(?)",
                (campaign_id, run_id, key, orjson.dumps(accepted).decode()),
            )
            self._db.execute(
                "INSERT INTO batches (campaign_id, idem_key, run_id, batch_seq, body_sha, batch_id, "
                "accepted, rejected, response, created_at, send_at, template_id, channel, segments) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'sms', ?)",
                (
                    campaign_id, key, run_id, body["batch_seq"], sha, batch_id,
                    len(accepted), len(rejected), orjson.dumps(response).decode(), time.time(),
                    body["send_at"], body["template_id"], billed,
                ),
            )
        return response


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> None:
    """``python -m campaignops.esp.sandbox``: serve in the foreground.

    The token comes from ``--token``, else ``CAMPAIGNOPS_ESP_TOKEN``, else a fresh
    one that is printed. ``--port 0`` picks a free port (printed on the first line).
    The fault flags are those of ``campaignops esp-sandbox``.
    """
    parser = argparse.ArgumentParser(description="campaignops ESP sandbox (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--db", default=None, help="SQLite file for deliveries (default: memory)")
    parser.add_argument("--token", default=None,
                        help="bearer token (default: CAMPAIGNOPS_ESP_TOKEN, else a fresh one)")
    parser.add_argument("--max-batch", type=int, default=1000)
    parser.add_argument("--rate-limit", type=_probability, default=0.0, help="share of 429 answers")
    parser.add_argument("--error-before-store", type=_probability, default=0.0,
                        help="share of 503 answers before storing")
    parser.add_argument("--error-after-store", type=_probability, default=0.0,
                        help="share of 500 answers after storing")
    parser.add_argument("--drop-connection", type=_probability, default=0.0,
                        help="share of connections dropped without an answer")
    parser.add_argument("--latency-ms", type=int, default=0, help="time spent on each new batch")
    parser.add_argument("--retry-after", type=int, default=0, help="Retry-After of a 429, seconds")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print the access log")
    default = Limits()
    parser.add_argument("--max-body-bytes", type=int, default=default.max_body_bytes,
                        help="largest body a batch may have; larger gets 413 unread")
    parser.add_argument("--read-timeout", type=float, default=default.read_timeout,
                        help="seconds a request has to arrive whole, from its first byte")
    parser.add_argument("--idle-timeout", type=float, default=default.idle_timeout,
                        help="seconds a kept-alive connection waits for its next request")
    args = parser.parse_args(argv)
    given = args.token or os.environ.get("CAMPAIGNOPS_ESP_TOKEN")
    token = given or secrets.token_urlsafe(24)
    try:
        faults = Faults(
            rate_limit=args.rate_limit, error_before_store=args.error_before_store,
            error_after_store=args.error_after_store, drop_connection=args.drop_connection,
            latency_ms=args.latency_ms, retry_after=args.retry_after, seed=args.fault_seed,
        )
        limits = Limits(
            max_body_bytes=args.max_body_bytes,
            max_inflight_body_bytes=max(default.max_inflight_body_bytes, args.max_body_bytes),
            read_timeout=args.read_timeout, idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        parser.error(str(exc))
    sandbox = EspSandbox(token, db_path=args.db, faults=faults, host=args.host, port=args.port,
                         max_batch=args.max_batch, quiet=not args.verbose, limits=limits)
    sandbox._bind()
    print(f"ESP sandbox on {sandbox.url}", flush=True)
    if not given:
        print(f"export CAMPAIGNOPS_ESP_URL={sandbox.url} CAMPAIGNOPS_ESP_TOKEN={token}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sandbox.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
