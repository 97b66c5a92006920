"""The ESP client: the client side of the ESP contract (docs/esp-contract.md) over httpx.

- 202: an acknowledgement (a replay says so with ``replayed=True``).
- 429 / 409: wait ``Retry-After`` (capped by ``max_retry_after``), same key.
- 5xx, timeouts, connection resets: same key again, exponential backoff with
  full jitter (``uniform(0, min(cap, base * 2**attempt))``).
- 400 / 401 / 403 / 404 / 422: :class:`HandoffError` at once.
- 413: :class:`BatchTooLarge`, so the caller splits the batch.

Every retry is bounded by ``max_attempts`` (all retry causes count), then
:class:`HandoffError`. Error texts are one line and carry neither addresses nor
the token; the token is a :class:`pydantic.SecretStr` that is only unwrapped
when a request's headers are built.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pydantic import SecretStr

from campaignops.errors import EspRejected, EspUnavailable, HandoffError, HandoffRefused

log = logging.getLogger("campaignops.esp")

_EMAILISH = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+")
_PHONEISH = re.compile(r"\+[0-9][0-9 ().-]{5,20}[0-9]")  # an international number, however written


class BatchTooLarge(HandoffError):
    """The ESP answered 413: split the batch and send the parts under new keys."""

    def __init__(self, key: str, recipients: int) -> None:
        self.key = key
        self.recipients = recipients
        super().__init__(f"ESP batch {key}: 413 too large ({recipients} recipients): split it")


@dataclass(frozen=True)
class BatchAck:
    """A 202 from the ESP for one idempotency key."""

    batch_id: str
    accepted: int
    rejected: list[dict[str, Any]]
    replayed: bool
    key: str = ""
    attempts: int = 1
    retries: dict[str, int] = field(default_factory=dict)
    segments: int = 0  # an SMS batch: the segments the ESP bills for its accepted messages


def idempotency_key(run_id: str, batch_seq: int, part: str | None = None) -> str:
    """The contract's key ``{run_id}:batch-{seq}``; split parts add ``.{part}``."""
    key = f"{run_id}:batch-{batch_seq}"
    return f"{key}.{part}" if part else key


class EspClient:
    """Posts batches to an ESP that speaks the ESP contract (docs/esp-contract.md).

    ``transport`` is passed to ``httpx.Client`` (tests use the real sandbox, so
    it is normally left alone). ``sleep`` and ``rng`` are injectable so tests can
    observe waits. The client is thread-safe: one instance serves every worker.
    """

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 60.0,
        max_connections: int = 16,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise HandoffRefused("the ESP token is empty: set CAMPAIGNOPS_ESP_TOKEN")
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": "campaignops-esp-client/1"},
            follow_redirects=False,
            # Requests only ever go to base_url (no redirects): over plain http there
            # is no TLS, so skip building a context (loading the CA bundle takes ~0.1 s
            # per client); https is verified as usual.
            verify=not self.base_url.lower().startswith("http://"),
        )

    def __repr__(self) -> str:
        return f"EspClient(base_url={self.base_url!r}, token=SecretStr('**********'))"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EspClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ---------------------------------------------------------
    def post_batch(
        self,
        campaign_id: str,
        run_id: str,
        batch_seq: int,
        payload: dict[str, Any],
        *,
        part: str | None = None,
        channel: str = "email",
    ) -> BatchAck:
        """POST one batch under key ``{run_id}:batch-{seq}[.{part}]`` until a 202.

        ``payload`` holds ``template_id``, ``send_at`` and ``recipients`` (an SMS batch
        also ``text`` and ``max_segments``); the client adds ``run_id`` and ``batch_seq``.
        ``channel`` picks the endpoint: ``email`` (``.../batches``) or ``sms``
        (``.../sms/batches``).
        """
        if channel not in ("email", "sms"):
            raise ValueError(f"channel must be email or sms, not {channel!r}")
        for name, value in (("run_id", run_id), ("batch_seq", batch_seq)):
            if name in payload and payload[name] != value:
                raise ValueError(f"payload {name} does not match the {name} argument")
        body = {**payload, "run_id": run_id, "batch_seq": batch_seq}
        key = idempotency_key(run_id, batch_seq, part)
        try:
            content = orjson.dumps(body)
        except TypeError as exc:  # not JSON-serialisable, or an integer beyond 64 bits
            raise HandoffError(f"ESP batch {key}: payload is not valid JSON ({exc})") from None
        endpoint = "sms/batches" if channel == "sms" else "batches"
        path = f"/v1/campaigns/{quote(campaign_id, safe='')}/{endpoint}"
        n = len(payload.get("recipients") or [])
        resp, attempts, retries = self._call("POST", path, what=f"batch {key}", key=key,
                                             content=content, recipients=n)
        try:
            data = orjson.loads(resp.content)
            ack = BatchAck(
                batch_id=str(data["batch_id"]),
                accepted=int(data["accepted"]),
                rejected=[
                    {"customer_id": r.get("customer_id"), "reason": self._clean(str(r.get("reason")))}
                    for r in data.get("rejected") or []
                ],
                replayed=resp.headers.get("Idempotent-Replayed", "").lower() == "true",
                key=key,
                attempts=attempts,
                retries=retries,
                segments=int(data.get("segments") or 0),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HandoffError(f"ESP batch {key}: 202 with a malformed body") from None
        return ack

    def run_summary(self, campaign_id: str, run_id: str) -> dict[str, int]:
        """GET the ESP's counts for a run: ``{"batches", "accepted", "rejected"}`` (an SMS run:
        also ``"segments"``, what the ESP bills)."""
        path = f"/v1/campaigns/{quote(campaign_id, safe='')}/runs/{quote(run_id, safe='')}"
        resp, _, _ = self._call("GET", path, what=f"run summary {run_id}")
        try:
            data = resp.json()
            keys = ("batches", "accepted", "rejected") + (("segments",) if "segments" in data else ())
            return {k: int(data[k]) for k in keys}
        except (ValueError, KeyError, TypeError):
            raise HandoffError(f"ESP run summary {run_id}: malformed body") from None

    # -- internals --------------------------------------------------------
    def _clean(self, text: str, limit: int = 200) -> str:
        """One line, no addresses, no token."""
        secret = self._token.get_secret_value()
        if secret:
            text = text.replace(secret, "**********")
        text = _EMAILISH.sub("<address>", text)
        text = _PHONEISH.sub("<phone>", text)
        text = " ".join(text.split())
        return text[:limit]

    def _reason(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
            msg = data.get("error") or data.get("message") or data.get("detail") or ""
        except (ValueError, AttributeError):
            msg = resp.text
        return self._clean(str(msg)) or resp.reason_phrase

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    def _retry_after(self, resp: httpx.Response, attempt: int) -> float:
        value = resp.headers.get("Retry-After")
        if value is None:
            return self._backoff(attempt)
        value = value.strip()
        try:
            seconds = float(int(value))
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                seconds = (when - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError, IndexError):
                return self._backoff(attempt)
        return min(max(seconds, 0.0), self.max_retry_after)

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        key: str | None = None,
        content: bytes | None = None,
        recipients: int = 0,
    ) -> tuple[httpx.Response, int, dict[str, int]]:
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if content is not None:
            headers["Content-Type"] = "application/json"
        retries: dict[str, int] = {}
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = self._http.request(method, path, content=content, headers=headers)
            except httpx.UnsupportedProtocol:
                raise HandoffRefused(
                    f"ESP {what}: {self.base_url!r} is not an http(s) URL: check CAMPAIGNOPS_ESP_URL"
                ) from None
            except httpx.TransportError as exc:  # timeouts, resets, refused
                last = type(exc).__name__
                cause = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
                delay = self._backoff(attempt)
            else:
                status = resp.status_code
                if status in (200, 202):
                    return resp, attempt, retries
                last = f"HTTP {status}"
                if status in (409, 429):
                    cause = str(status)
                    delay = self._retry_after(resp, attempt)
                elif status >= 500:
                    cause = "5xx"
                    delay = self._backoff(attempt)
                elif status == 413 and key is not None:
                    raise BatchTooLarge(key, recipients)
                elif status in (401, 403):
                    raise EspRejected(
                        f"ESP {what}: {status} refused the token: check CAMPAIGNOPS_ESP_TOKEN"
                    )
                elif status == 422:
                    raise EspRejected(
                        f"ESP {what}: 422 {self._reason(resp)} "
                        "(the same key was sent with another body: a bug, not retried)"
                    )
                else:
                    raise EspRejected(f"ESP {what}: {status} {self._reason(resp)} (not retried)")
            retries[cause] = retries.get(cause, 0) + 1
            if attempt == self.max_attempts:
                break
            log.warning(
                "ESP %s: %s, retrying in %.2fs (attempt %d/%d)",
                what, last, delay, attempt, self.max_attempts,
            )
            self._sleep(delay)
        raise EspUnavailable(f"ESP {what}: gave up after {self.max_attempts} attempts (last: {last})")
