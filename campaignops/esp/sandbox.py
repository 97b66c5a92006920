"""A loopback ESP that implements ESP_CONTRACT.md, with seeded fault injection.

Built on ``http.server.ThreadingHTTPServer`` (plus orjson for the bodies) so
the demo and the tests talk real HTTP to it. Every accepted recipient is
recorded (campaign, run, idempotency key, customer, address, seed flag) in
SQLite, and every accepted batch with its ``send_at`` and template, so a test
can prove exactly-once: a recipient accepted under two different keys shows up
with a count of 2, never hidden.

Request bodies carry addresses: they are never logged. The access log is off by
default (``quiet=True``) and, when on, prints only the request line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
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
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

_BATCHES_PATH = re.compile(r"^/v1/campaigns/([^/]+)/batches$")
_RUN_PATH = re.compile(r"^/v1/campaigns/([^/]+)/runs/([^/]+)$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")+$")
_MAX_BODY_BYTES = 64 * 1024 * 1024
_RECIPIENT_KEYS = {"customer_id", "address", "cell", "offer_code", "fields", "seed"}
_CONFLICT_RETRY_AFTER = 1  # seconds a client should wait on 409
_STR_OR_NONE = (str, type(None))
_SCALARS = (str, int, float, bool, type(None))

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
    seed INTEGER NOT NULL
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _BadRequest("body: must be a JSON object")
    allowed = {"run_id", "batch_seq", "send_at", "template_id", "recipients"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _BadRequest(f"{unknown[0]}: unknown field")
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise _BadRequest("run_id: must be a non-empty string")
    seq = body.get("batch_seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise _BadRequest("batch_seq: must be an integer >= 0")
    if "send_at" not in body:
        raise _BadRequest("send_at: required (an ISO-8601 time or null)")
    send_at = body["send_at"]
    if send_at is not None:
        if not isinstance(send_at, str):
            raise _BadRequest("send_at: must be an ISO-8601 string or null")
        try:
            datetime.fromisoformat(send_at.replace("Z", "+00:00"))
        except ValueError:
            raise _BadRequest("send_at: not an ISO-8601 time") from None
    template_id = body.get("template_id")
    if not isinstance(template_id, str) or not template_id:
        raise _BadRequest("template_id: must be a non-empty string")
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise _BadRequest("recipients: must be a non-empty list")
    for i, r in enumerate(recipients):
        # The common, well-formed recipient is checked with a few type tests;
        # only a failing one goes through the field-by-field diagnosis.
        if (
            type(r) is dict
            and r.keys() <= _RECIPIENT_KEYS
            and type(r.get("customer_id")) is int
            and type(r.get("address")) is str
            and type(r.get("cell")) in _STR_OR_NONE
            and type(r.get("offer_code")) in _STR_OR_NONE
            and type(r.get("seed", False)) is bool
        ):
            fields = r.get("fields")
            if fields is None and "fields" not in r:
                continue
            if type(fields) is dict and all(type(v) in _SCALARS for v in fields.values()):
                continue
        _diagnose(i, r)


def _diagnose(i: int, r: Any) -> None:
    """Raise _BadRequest naming the first bad field of recipients[i] (or return if fine)."""
    where = f"recipients[{i}]"
    if not isinstance(r, dict):
        raise _BadRequest(f"{where}: must be an object")
    extra = sorted(set(r) - _RECIPIENT_KEYS)
    if extra:
        raise _BadRequest(f"{where}.{extra[0]}: unknown field")
    if "customer_id" not in r or not (r["customer_id"] is None or _is_int(r["customer_id"])):
        raise _BadRequest(f"{where}.customer_id: must be an integer or null")
    if not isinstance(r.get("address"), str):
        raise _BadRequest(f"{where}.address: must be a string")
    for key in ("cell", "offer_code"):
        if r.get(key) is not None and not isinstance(r[key], str):
            raise _BadRequest(f"{where}.{key}: must be a string or null")
    fields = r.get("fields", {})
    if not isinstance(fields, dict):
        raise _BadRequest(f"{where}.fields: must be an object")
    for name, value in fields.items():
        if value is not None and not isinstance(value, str | int | float | bool):
            raise _BadRequest(f"{where}.fields.{name}: must be a scalar")
    if not isinstance(r.get("seed", False), bool):
        raise _BadRequest(f"{where}.seed: must be a boolean")
    if r.get("customer_id") is None and not r.get("seed", False):
        raise _BadRequest(f"{where}.customer_id: required unless seed is true")


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
            self._open.add(request)
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
    timeout = 60
    wbufsize = 64 * 1024  # headers and body leave in one write
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Small request/response pairs on a kept-alive connection: without this,
        # Nagle plus delayed ACKs add ~40 ms to every exchange.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Only the request line and status (never bodies, never headers).
        if not self.server.sandbox.quiet:
            sys.stderr.write(f"esp-sandbox: {self.address_string()} {format % args}\n")

    # -- plumbing ---------------------------------------------------------
    def _send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = orjson.dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        expected = f"Bearer {self.server.sandbox._token}".encode()
        got = (self.headers.get("Authorization") or "").encode()
        return hmac.compare_digest(got, expected)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(411, "Content-Length: required")
            return None
        n = int(length)
        if n > _MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"body: larger than {_MAX_BODY_BYTES} bytes")
            return None
        return self.rfile.read(n)

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
        sandbox = self.server.sandbox
        path = urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            return
        m = _BATCHES_PATH.match(path)
        if not m:
            self._error(404, "not found")
            return
        campaign_id = unquote(m.group(1))
        sandbox._count(None, "requests")
        if not self._authorized():
            sandbox._count(None, "status_401")
            self._error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            return
        key = (self.headers.get("Idempotency-Key") or "").strip()
        if not key or len(key) > 255:
            sandbox._count(None, "status_400")
            self._error(400, "Idempotency-Key: header required (1-255 characters)")
            return
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            sandbox._count(None, "status_400")
            self._error(400, "body: not valid JSON")
            return
        run_id = parsed.get("run_id") if isinstance(parsed, dict) else None
        run = run_id if isinstance(run_id, str) else None
        sandbox._count_run(run, "requests")
        recipients = parsed.get("recipients") if isinstance(parsed, dict) else None
        if isinstance(recipients, list) and len(recipients) > sandbox.max_batch:
            sandbox._count(run, "status_413")
            self._error(
                413, f"recipients: {len(recipients)} in one batch, at most {sandbox.max_batch}"
            )
            return
        try:
            _validate(parsed)
        except _BadRequest as exc:
            sandbox._count(run, "status_400")
            self._error(400, str(exc))
            return
        status, payload, headers = sandbox._process(campaign_id, key, parsed)
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
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self._token = token
        self.faults = faults or Faults()
        self.max_batch = max_batch
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
        self._processing: dict[tuple[str, str], str] = {}
        self._counters: dict[str | None, Counter[str]] = {None: Counter()}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"EspSandbox(url={self.url!r}, max_batch={self.max_batch}, faults={self.faults!r})"

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
            batches, accepted, rejected = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(accepted), 0), COALESCE(SUM(rejected), 0) "
                "FROM batches WHERE campaign_id = ? AND run_id = ?",
                (campaign_id, run_id),
            ).fetchone()
        return {"batches": batches, "accepted": accepted, "rejected": rejected}

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
        self, campaign_id: str, key: str, body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        """Idempotency, faults and storage for one valid batch. Status 0 = drop."""
        run_id: str = body["run_id"]
        f = self.faults
        if self._draw(f.rate_limit):
            self._count(run_id, "fault_rate_limit")
            self._count(run_id, "status_429")
            return 429, {"error": "rate limited"}, {"Retry-After": str(f.retry_after)}
        sha = hashlib.sha256(canonical_json(body)).hexdigest()
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
                response = self._store(campaign_id, key, sha, body)
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
    args = parser.parse_args(argv)
    given = args.token or os.environ.get("CAMPAIGNOPS_ESP_TOKEN")
    token = given or secrets.token_urlsafe(24)
    try:
        faults = Faults(
            rate_limit=args.rate_limit, error_before_store=args.error_before_store,
            error_after_store=args.error_after_store, drop_connection=args.drop_connection,
            latency_ms=args.latency_ms, retry_after=args.retry_after, seed=args.fault_seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    sandbox = EspSandbox(token, db_path=args.db, faults=faults, host=args.host, port=args.port,
                         max_batch=args.max_batch, quiet=not args.verbose)
    sandbox._bind()
    print(f"ESP sandbox on {sandbox.url}", flush=True)
    if not given:
        print(f"export CAMPAIGNOPS_ESP_URL={sandbox.url} CAMPAIGNOPS_ESP_TOKEN={token}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sandbox.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
