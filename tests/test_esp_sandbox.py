"""The ESP sandbox speaks docs/esp-contract.md over real HTTP; the client follows it.

The hardening tests attack it over loopback as a hostile client would: raw sockets for
bodies that never come, come slowly or are too large, and a sandbox process whose peak
memory is read from /proc under a flood of unauthenticated 60 MB POSTs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from campaignops import migrations
from campaignops.errors import HandoffError
from campaignops.esp import BatchTooLarge, EspClient, EspSandbox, Faults, idempotency_key
from campaignops.esp.sandbox import Limits
from campaignops.handoff.http import send_audience
from campaignops.schema import audience
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit

pytestmark = pytest.mark.unit

TOKEN = "sandbox-token-5f1c9e"
CAMPAIGN = "winback"
BATCHES = f"/v1/campaigns/{CAMPAIGN}/batches"


def recipient(i: int, address: str | None = None, seed: bool = False) -> dict[str, Any]:
    return {
        "customer_id": None if seed else i,
        "address": address or f"user{i}@example.com",
        "cell": "A",
        "offer_code": "WELCOME10",
        "fields": {"first_name": "Ada"},
        "seed": seed,
    }


def body(run_id: str = "r1", seq: int = 0, n: int = 3, start: int = 0) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "batch_seq": seq,
        "send_at": "2027-03-01T14:00:00Z",
        "template_id": "winback-v2",
        "recipients": [recipient(i) for i in range(start, start + n)],
    }


def payload(n: int = 3, start: int = 0) -> dict[str, Any]:
    b = body(n=n, start=start)
    return {k: b[k] for k in ("send_at", "template_id", "recipients")}


def headers(key: str | None = "r1:batch-0", token: str | None = TOKEN) -> dict[str, str]:
    h = {}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if key is not None:
        h["Idempotency-Key"] = key
    return h


@pytest.fixture
def sandbox() -> Iterator[EspSandbox]:
    sb = EspSandbox(TOKEN).start()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def http(sandbox: EspSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        yield client


def post(http: httpx.Client, b: Any, **kw: Any) -> httpx.Response:
    return http.post(f"/v1/campaigns/{CAMPAIGN}/batches", json=b, headers=headers(**kw))


def make_client(sandbox: EspSandbox, **kw: Any) -> EspClient:
    opts: dict[str, Any] = {"backoff_base": 0.001, "backoff_cap": 0.005, "max_retry_after": 0.05}
    opts.update(kw)
    return EspClient(sandbox.url, SecretStr(opts.pop("token", TOKEN)), **opts)


# -- the contract, status by status ---------------------------------------------------
def test_healthz_needs_no_token(http: httpx.Client) -> None:
    resp = http.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"ok": True}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_401_without_the_right_token(
    sandbox: EspSandbox, http: httpx.Client, token: str | None
) -> None:
    resp = post(http, body(), token=token)
    assert resp.status_code == 401
    assert http.get(f"/v1/campaigns/{CAMPAIGN}/runs/r1", headers=headers(token=token)).status_code == 401
    assert sandbox.deliveries(CAMPAIGN, "r1") == {}


def test_400_without_idempotency_key(sandbox: EspSandbox, http: httpx.Client) -> None:
    resp = post(http, body(), key=None)
    assert resp.status_code == 400
    assert "Idempotency-Key" in resp.json()["error"]
    assert sandbox.deliveries(CAMPAIGN, "r1") == {}


def test_400_malformed_names_the_field_not_the_value(http: httpx.Client) -> None:
    resp = http.post(
        f"/v1/campaigns/{CAMPAIGN}/batches", content=b"{not json", headers=headers()
    )
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]

    b = body()
    del b["template_id"]
    resp = post(http, b)
    assert resp.status_code == 400 and resp.json()["error"].startswith("template_id")

    b = body()
    b["recipients"][1]["address"] = ["secret@example.com"]
    resp = post(http, b)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("recipients[1].address")
    assert "secret@example.com" not in resp.text

    b = body()
    b["batch_seq"] = -1
    assert post(http, b).json()["error"].startswith("batch_seq")
    b = body()
    b["send_at"] = "next tuesday"
    assert post(http, b).json()["error"].startswith("send_at")


def test_413_over_max_batch() -> None:
    with EspSandbox(TOKEN, max_batch=10) as sb, httpx.Client(base_url=sb.url) as http:
        resp = post(http, body(n=11))
        assert resp.status_code == 413
        assert post(http, body(n=10)).status_code == 202
        assert len(sb.deliveries(CAMPAIGN, "r1")) == 10


def test_202_then_replay_with_the_same_body(sandbox: EspSandbox, http: httpx.Client) -> None:
    first = post(http, body())
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    ack = first.json()
    assert set(ack) == {"batch_id", "accepted", "rejected"}
    assert ack["accepted"] == 3 and ack["rejected"] == []
    again = post(http, body())
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == ack
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}
    assert sandbox.stats("r1")["replays"] == 1


def test_422_same_key_different_body(sandbox: EspSandbox, http: httpx.Client) -> None:
    assert post(http, body(n=3)).status_code == 202
    resp = post(http, body(n=4))
    assert resp.status_code == 422
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_409_while_the_same_key_is_processing() -> None:
    with EspSandbox(TOKEN, faults=Faults(latency_ms=400)) as sb, httpx.Client(
        base_url=sb.url, timeout=10
    ) as http:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(post(http, body()).status_code))
        t.start()
        time.sleep(0.15)
        busy = post(http, body())
        assert busy.status_code == 409
        assert int(busy.headers["Retry-After"]) >= 1
        other = post(http, body(n=5))  # same key, other body, while processing
        assert other.status_code == 422
        t.join()
        assert results == [202]
        replay = post(http, body())
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
        assert sb.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_429_stores_nothing_and_says_when_to_retry() -> None:
    with EspSandbox(TOKEN, faults=Faults(rate_limit=1.0, retry_after=1)) as sb, httpx.Client(
        base_url=sb.url
    ) as http:
        resp = post(http, body())
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert sb.deliveries(CAMPAIGN, "r1") == {}
        assert sb.run_summary(CAMPAIGN, "r1") == {"batches": 0, "accepted": 0, "rejected": 0}


def test_5xx_faults_store_or_not_as_documented() -> None:
    with EspSandbox(TOKEN, faults=Faults(error_before_store=1.0)) as sb, httpx.Client(
        base_url=sb.url
    ) as http:
        assert post(http, body()).status_code == 503
        assert sb.deliveries(CAMPAIGN, "r1") == {}
    with EspSandbox(TOKEN, faults=Faults(error_after_store=1.0)) as sb, httpx.Client(
        base_url=sb.url
    ) as http:
        assert post(http, body()).status_code == 500
        assert sb.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}
        replay = post(http, body())  # faults hit new batches only
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"


def test_dropped_connection_gives_no_response() -> None:
    with EspSandbox(TOKEN, faults=Faults(drop_connection=1.0, seed=3)) as sb, httpx.Client(
        base_url=sb.url
    ) as http:
        with pytest.raises(httpx.TransportError):
            post(http, body())
        stats = sb.stats("r1")
        assert stats.get("fault_drop_stored", 0) + stats.get("fault_drop_not_stored", 0) == 1


def test_rejects_invalid_addresses_without_storing_them(
    sandbox: EspSandbox, http: httpx.Client
) -> None:
    b = body(n=2)
    b["recipients"].append(recipient(7, address="not-an-address"))
    b["recipients"].append(recipient(8, address="two@@example.com"))
    ack = post(http, b).json()
    assert ack["accepted"] == 2
    assert ack["rejected"] == [
        {"customer_id": 7, "reason": "invalid_address"},
        {"customer_id": 8, "reason": "invalid_address"},
    ]
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1}
    assert sandbox.run_summary(CAMPAIGN, "r1") == {"batches": 1, "accepted": 2, "rejected": 2}


def test_duplicate_under_two_keys_is_visible(sandbox: EspSandbox, http: httpx.Client) -> None:
    assert post(http, body(seq=0), key="r1:batch-0").status_code == 202
    assert post(http, body(seq=0), key="r1:batch-0-other").status_code == 202
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 2, "1": 2, "2": 2}
    keys = {row["key"] for row in sandbox.delivery_rows(CAMPAIGN, "r1")}
    assert keys == {"r1:batch-0", "r1:batch-0-other"}


def test_run_summary_counts_distinct_accepted_keys(
    sandbox: EspSandbox, http: httpx.Client
) -> None:
    post(http, body(seq=0, n=3), key="r1:batch-0")
    post(http, body(seq=0, n=3), key="r1:batch-0")  # replay: not counted twice
    post(http, body(seq=1, n=2, start=3), key="r1:batch-1")
    resp = http.get(f"/v1/campaigns/{CAMPAIGN}/runs/r1", headers=headers(key=None))
    assert resp.json() == {"batches": 2, "accepted": 5, "rejected": 0}


def test_seeds_are_keyed_by_address(sandbox: EspSandbox, http: httpx.Client) -> None:
    b = body(n=1)
    b["recipients"].append(recipient(0, address="proof@company.example", seed=True))
    assert post(http, b).status_code == 202
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "proof@company.example": 1}
    rows = sandbox.delivery_rows(CAMPAIGN, "r1")
    assert [r["seed"] for r in rows] == [False, True]


def test_deliveries_persist_in_a_file(tmp_path: Path) -> None:
    db = tmp_path / "esp.db"
    with EspSandbox(TOKEN, db_path=str(db)) as sb, httpx.Client(base_url=sb.url) as http:
        assert post(http, body()).status_code == 202
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (3,)
    finally:
        conn.close()


def test_batches_record_send_at_and_template(sandbox: EspSandbox, http: httpx.Client) -> None:
    assert post(http, body()).status_code == 202
    later = body(seq=1, start=3)
    later["send_at"] = None
    assert post(http, later, key="r1:batch-1").status_code == 202
    assert post(http, body()).status_code == 202  # a replay adds nothing
    assert sandbox.batches(CAMPAIGN, "r1") == [
        {"key": "r1:batch-0", "batch_seq": 0, "send_at": "2027-03-01T14:00:00Z",
         "template_id": "winback-v2", "accepted": 3, "rejected": 0},
        {"key": "r1:batch-1", "batch_seq": 1, "send_at": None,
         "template_id": "winback-v2", "accepted": 3, "rejected": 0},
    ]


def test_a_delivery_file_from_an_older_sandbox_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "esp.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE batches (campaign_id TEXT NOT NULL, idem_key TEXT NOT NULL, "
        "run_id TEXT NOT NULL, batch_seq INTEGER NOT NULL, body_sha TEXT NOT NULL, "
        "batch_id TEXT NOT NULL, accepted INTEGER NOT NULL, rejected INTEGER NOT NULL, "
        "response TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (campaign_id, idem_key));"
    )
    conn.close()
    with EspSandbox(TOKEN, db_path=str(db)) as sb, httpx.Client(base_url=sb.url) as http:
        assert post(http, body()).status_code == 202
        assert [b["send_at"] for b in sb.batches(CAMPAIGN, "r1")] == ["2027-03-01T14:00:00Z"]


def test_fast_validation_agrees_with_the_field_by_field_check(http: httpx.Client) -> None:
    """Well-formed recipients take a fast path; anything odd still gets its precise 400."""
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"customer_id": True}, "recipients[0].customer_id"),
        ({"customer_id": 1.5}, "recipients[0].customer_id"),
        ({"cell": 3}, "recipients[0].cell"),
        ({"offer_code": ["x"]}, "recipients[0].offer_code"),
        ({"fields": None}, "recipients[0].fields"),
        ({"fields": {"first_name": {"a": 1}}}, "recipients[0].fields.first_name"),
        ({"seed": "yes"}, "recipients[0].seed"),
        ({"customer_id": None}, "recipients[0].customer_id"),
        ({"extra": 1}, "recipients[0].extra"),
        ({"fields": {"n": 1, "f": 1.5, "b": True, "z": None}}, None),
        ({"cell": None, "offer_code": None}, None),
        ({"customer_id": None, "seed": True}, None),
    ]
    for i, (change, error) in enumerate(cases):
        b = body(seq=i, n=1)
        b["recipients"][0].update(change)
        resp = post(http, b, key=f"r1:batch-{i}")
        if error is None:
            assert resp.status_code == 202, (change, resp.text)
        else:
            assert resp.status_code == 400 and resp.json()["error"].startswith(error), change
    b = body(n=2)
    del b["recipients"][1]["fields"]  # fields may be left out
    assert post(http, b, key="r1:batch-99").status_code == 202


def test_access_log_is_quiet_and_never_prints_bodies(capfd: pytest.CaptureFixture[str]) -> None:
    with EspSandbox(TOKEN) as sb, httpx.Client(base_url=sb.url) as http:
        post(http, body())
    assert capfd.readouterr().err == ""
    with EspSandbox(TOKEN, quiet=False) as sb, httpx.Client(base_url=sb.url) as http:
        post(http, body())
    err = capfd.readouterr().err
    assert "POST /v1/campaigns/winback/batches" in err and "202" in err
    assert "@example.com" not in err and TOKEN not in err


# -- the client ------------------------------------------------------------------------
def test_client_posts_and_acknowledges(sandbox: EspSandbox) -> None:
    with make_client(sandbox) as client:
        ack = client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert (ack.accepted, ack.rejected, ack.replayed, ack.key) == (3, [], False, "r1:batch-0")
        again = client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert again.replayed and again.batch_id == ack.batch_id
        assert client.run_summary(CAMPAIGN, "r1") == {"batches": 1, "accepted": 3, "rejected": 0}
    assert idempotency_key("r1", 4) == "r1:batch-4"
    assert idempotency_key("r1", 4, "1.0") == "r1:batch-4.1.0"


def test_client_honours_retry_after_then_gives_up() -> None:
    waits: list[float] = []
    with EspSandbox(TOKEN, faults=Faults(rate_limit=1.0, retry_after=1)) as sb:
        with make_client(sb, max_attempts=4, max_retry_after=60, sleep=waits.append) as client:
            with pytest.raises(HandoffError, match="gave up after 4 attempts"):
                client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert waits == [1.0, 1.0, 1.0]
        assert sb.stats("r1")["status_429"] == 4
        assert sb.deliveries(CAMPAIGN, "r1") == {}


def test_client_retries_rate_limits_with_the_same_key() -> None:
    with EspSandbox(TOKEN, faults=Faults(rate_limit=0.6, seed=11)) as sb:
        with make_client(sb, max_attempts=30) as client:
            acks = [client.post_batch(CAMPAIGN, "r1", s, payload(n=2, start=2 * s)) for s in range(6)]
        assert sum(a.retries.get("429", 0) for a in acks) > 0
        assert all(a.attempts == 1 + sum(a.retries.values()) for a in acks)
        assert sb.deliveries(CAMPAIGN, "r1") == {str(i): 1 for i in range(12)}


def test_client_backs_off_on_5xx_and_is_bounded() -> None:
    waits: list[float] = []
    with EspSandbox(TOKEN, faults=Faults(error_before_store=1.0)) as sb:
        with make_client(
            sb, max_attempts=5, backoff_base=0.1, backoff_cap=0.25, sleep=waits.append
        ) as client:
            with pytest.raises(HandoffError, match="gave up after 5 attempts .last: HTTP 503"):
                client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert sb.stats("r1")["status_503"] == 5
    caps = [0.1, 0.2, 0.25, 0.25]  # min(cap, base * 2**n): full jitter below it
    assert len(waits) == 4 and all(0 <= w <= c for w, c in zip(waits, caps, strict=True))


def test_client_5xx_after_store_comes_back_as_replay() -> None:
    with EspSandbox(TOKEN, faults=Faults(error_after_store=1.0)) as sb:
        with make_client(sb) as client:
            ack = client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert ack.replayed and ack.attempts == 2 and ack.retries == {"5xx": 1}
        assert sb.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_client_survives_dropped_connections() -> None:
    with EspSandbox(TOKEN, faults=Faults(drop_connection=1.0, seed=5)) as sb:
        with make_client(sb, max_attempts=40) as client:
            ack = client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert ack.replayed and ack.retries["transport"] >= 1
        assert sb.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_client_timeout_then_409_then_replay() -> None:
    with EspSandbox(TOKEN, faults=Faults(latency_ms=500)) as sb:
        with make_client(sb, timeout=0.15, max_attempts=40, backoff_base=0.05) as client:
            ack = client.post_batch(CAMPAIGN, "r1", 0, payload())
        assert ack.retries.get("timeout", 0) >= 1
        assert ack.replayed
        assert sb.stats("r1")["stored"] == 1
        assert sb.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_client_permanent_errors_are_not_retried(sandbox: EspSandbox) -> None:
    with make_client(sandbox, token="not-the-token") as bad:
        with pytest.raises(HandoffError, match="401"):
            bad.post_batch(CAMPAIGN, "r1", 0, payload())
        with pytest.raises(HandoffError, match="401"):
            bad.run_summary(CAMPAIGN, "r1")
    with make_client(sandbox) as client:
        broken = payload()
        broken["template_id"] = ""
        with pytest.raises(HandoffError, match="400 template_id"):
            client.post_batch(CAMPAIGN, "r1", 0, broken)
        client.post_batch(CAMPAIGN, "r1", 1, payload(n=2))
        with pytest.raises(HandoffError, match="422"):
            client.post_batch(CAMPAIGN, "r1", 1, payload(n=3))
    assert sandbox.stats()["requests"] == 4  # 401, 400, 202, 422: one try each


def test_client_413_raises_batch_too_large() -> None:
    with EspSandbox(TOKEN, max_batch=2) as sb, make_client(sb) as client:
        with pytest.raises(BatchTooLarge) as err:
            client.post_batch(CAMPAIGN, "r1", 0, payload(n=3))
        assert isinstance(err.value, HandoffError)
        assert err.value.key == "r1:batch-0" and err.value.recipients == 3


def test_token_never_in_errors_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-NEVER-PRINT-ME-81f2"
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    b = payload()
    b["recipients"][0]["address"] = ["x@example.com"]
    with EspSandbox(secret, max_batch=2) as sb, make_client(sb, token=secret, max_attempts=3) as c:
        calls: tuple[Callable[[], object], ...] = (
            lambda: c.post_batch(CAMPAIGN, "r1", 0, b),  # 400
            lambda: c.post_batch(CAMPAIGN, "r1", 0, payload(n=3)),  # 413
        )
        for call in calls:
            with pytest.raises(HandoffError) as err:
                call()
            errors.append(err.value)
        c.post_batch(CAMPAIGN, "r1", 1, payload(n=2))
        with pytest.raises(HandoffError) as err:
            c.post_batch(CAMPAIGN, "r1", 1, payload(n=1))  # 422
        errors.append(err.value)
        assert secret not in repr(c) and secret not in str(c)
    with EspSandbox("other-token") as sb, make_client(sb, token=secret) as c:
        with pytest.raises(HandoffError) as err:
            c.post_batch(CAMPAIGN, "r1", 0, payload())  # 401
        errors.append(err.value)
    with EspSandbox(secret, faults=Faults(error_before_store=1.0)) as sb:
        with make_client(sb, token=secret, max_attempts=2) as c:
            with pytest.raises(HandoffError) as err:
                c.post_batch(CAMPAIGN, "r1", 0, payload())  # gave up on 503
            errors.append(err.value)
    dead = EspSandbox(secret).start()
    url = dead.url
    dead.stop()  # nothing listens there any more: connection refused
    with EspClient(url, SecretStr(secret), max_attempts=2, backoff_base=0.001) as c:
        with pytest.raises(HandoffError, match="ConnectError") as err:
            c.post_batch(CAMPAIGN, "r1", 0, payload())
        errors.append(err.value)
    assert len(errors) == 6
    for exc in errors:
        text = "".join(traceback.format_exception(exc)) + repr(exc)
        assert secret not in text
        assert "@example.com" not in text
        assert "\n" not in str(exc)
    assert secret not in caplog.text and "@example.com" not in caplog.text
    assert "retrying" in caplog.text


def test_client_payload_must_agree_with_arguments(sandbox: EspSandbox) -> None:
    with make_client(sandbox) as client:
        with pytest.raises(ValueError, match="batch_seq"):
            client.post_batch(CAMPAIGN, "r1", 0, {**payload(), "batch_seq": 3})
    assert json.dumps(sandbox.stats()) == json.dumps({})


def test_faults_are_probabilities() -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        Faults(rate_limit=1.5)
    with pytest.raises(ValueError, match="latency_ms"):
        Faults(latency_ms=-1)


# -- hardening: a hostile client over raw sockets ----------------------------------------
def raw_request(
    sandbox: EspSandbox, length: int, *, token: str | None = "wrong-token",
    key: str | None = "r1:batch-0", path: str = BATCHES, extra: str = "",
) -> socket.socket:
    """A connection that has sent a POST's headers (declaring `length` body bytes) and no body."""
    sock = socket.create_connection((sandbox.host, sandbox.port), timeout=5)
    head = f"POST {path} HTTP/1.1\r\nHost: esp\r\nContent-Type: application/json\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    sock.sendall(f"{head}Content-Length: {length}\r\n{extra}\r\n".encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one response on a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(hdrs["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response"
        rest += chunk
    return int(lines[0].split()[1]), hdrs, orjson.loads(rest)


def closed_by_server(sock: socket.socket, within: float = 3.0) -> bool:
    """The server closed the connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_401_is_answered_before_the_body_is_read_and_the_connection_closed(
    sandbox: EspSandbox, token: str | None
) -> None:
    # 60 MB declared, not one byte sent: the answer can only come from the headers.
    with raw_request(sandbox, 60_000_000, token=token) as sock:
        status, hdrs, err = read_response(sock)
        assert (status, hdrs["www-authenticate"], hdrs["connection"]) == (401, "Bearer", "close")
        assert err == {"error": "missing or invalid bearer token"}
        assert closed_by_server(sock)
    assert sandbox.stats()["status_401"] == 1


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"path": "/v1/elsewhere"}, 404, "not found"),
        ({"key": None, "token": TOKEN}, 400, "Idempotency-Key"),
        ({"token": TOKEN, "length": 4 * 1024 * 1024 + 1}, 413, "body: 4194305 bytes, more than"),
        ({"token": TOKEN, "length": "12abc"}, 411, "Content-Length"),
        ({"token": TOKEN, "length": "\u0661\u0662"}, 411, "Content-Length"),  # digits, not ASCII
        ({"token": TOKEN, "extra": "Content-Length: 5\r\n"}, 400, "Content-Length: given more"),
        ({"token": TOKEN, "extra": "Transfer-Encoding: chunked\r\n"}, 411, "Transfer-Encoding"),
    ],
)
def test_what_needs_no_body_is_refused_unread(
    sandbox: EspSandbox, change: dict[str, Any], status: int, error: str
) -> None:
    length = change.pop("length", 60_000_000)
    with raw_request(sandbox, length, **change) as sock:  # type: ignore[arg-type]
        got, hdrs, body = read_response(sock)
        assert (got, hdrs["connection"]) == (status, "close")
        assert body["error"].startswith(error)
        assert closed_by_server(sock)
    assert sandbox.deliveries(CAMPAIGN, "r1") == {}


def test_413_body_size_says_what_to_do(sandbox: EspSandbox) -> None:
    with raw_request(sandbox, 5_000_000, token=TOKEN) as sock:
        assert read_response(sock)[2] == {
            "error": "body: 5000000 bytes, more than the 4194304 a batch may have: "
            "send fewer recipients per batch"
        }


def test_lying_content_length_is_cut_off_within_the_read_timeout() -> None:
    with EspSandbox(TOKEN, limits=Limits(read_timeout=0.5)) as sb:
        sock = raw_request(sb, 1000, token=TOKEN)
        started = time.monotonic()
        sock.sendall(b'{"run_id": "r1"')  # 15 of the 1,000 bytes it declared
        status, _, err = read_response(sock)
        took = time.monotonic() - started
        assert status == 408 and err["error"].startswith("body: not received within 0.5 s")
        assert closed_by_server(sock)
        sock.close()
        assert 0.4 <= took < 3.0, took
        assert sb.deliveries(CAMPAIGN, "r1") == {}


def test_a_trickling_body_is_cut_off_at_the_deadline_not_per_read() -> None:
    # A byte every 0.1 s never trips a per-read timeout of 0.5 s; the whole-request
    # deadline ends it anyway.
    with EspSandbox(TOKEN, limits=Limits(read_timeout=0.5)) as sb:
        sock = raw_request(sb, 100, token=TOKEN)
        started = time.monotonic()
        status = 0
        for _ in range(60):
            try:
                sock.send(b" ")
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                status = read_response(sock)[0]
                break
            except TimeoutError:
                continue
        took = time.monotonic() - started
        sock.close()
        assert status == 408 and took < 3.0, (status, took)


def test_slow_headers_and_idle_connections_are_closed() -> None:
    with EspSandbox(TOKEN, limits=Limits(read_timeout=0.5, idle_timeout=0.5)) as sb:
        idle = socket.create_connection((sb.host, sb.port))
        started = time.monotonic()
        assert closed_by_server(idle, within=5)
        assert time.monotonic() - started < 3.0
        idle.close()
        slow = socket.create_connection((sb.host, sb.port))
        slow.sendall(b"POST /v1/campaigns/winback/batches HTTP/1.1\r\n")
        started = time.monotonic()
        for _ in range(50):  # one header byte every 0.1 s
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 3.0:
                break
        assert closed_by_server(slow, within=1)
        assert time.monotonic() - started < 3.0
        slow.close()
        # A client that keeps its connection busy is served as before.
        with httpx.Client(base_url=sb.url) as http:
            for seq in range(3):
                assert post(http, body(seq=seq, start=3 * seq), key=f"r1:batch-{seq}").status_code == 202
                time.sleep(0.2)


def test_oversized_headers_get_431_as_json(sandbox: EspSandbox) -> None:
    with raw_request(sandbox, 10, token=TOKEN, extra="X-Pad: " + "a" * 40_000 + "\r\n") as sock:
        status, _, err = read_response(sock)
        assert status == 431 and "more than 32768 bytes" in err["error"]
        assert closed_by_server(sock)


def test_protocol_errors_are_json(sandbox: EspSandbox) -> None:
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        status, hdrs, err = read_response(sock)
        assert status == 400 and hdrs["content-type"] == "application/json" and err["error"]
    with httpx.Client(base_url=sandbox.url) as http:
        resp = http.put(BATCHES, content=b"{}")
        assert resp.status_code == 501 and "error" in resp.json()


def test_too_many_bodies_at_once_get_429_and_the_client_waits() -> None:
    limits = Limits(max_body_bytes=250_000, max_inflight_body_bytes=250_000)
    with EspSandbox(TOKEN, limits=limits) as sb, httpx.Client(base_url=sb.url) as http:
        holder = raw_request(sb, 249_900, token=TOKEN, key="r1:batch-9")  # its body is coming
        holder.sendall(b" " * 1000)
        time.sleep(0.2)
        busy = post(http, body())
        assert (busy.status_code, busy.headers["Retry-After"]) == (429, "1")
        assert busy.headers["connection"] == "close"
        holder.close()  # the held bytes are released when its read ends
        time.sleep(0.2)
        assert post(http, body()).status_code == 202
    with EspSandbox(TOKEN, limits=limits) as sb:
        holder = raw_request(sb, 249_900, token=TOKEN, key="r1:batch-9")
        holder.sendall(b" " * 1000)
        time.sleep(0.2)  # the sandbox holds its budget before the client's first try
        threading.Timer(0.3, holder.close).start()
        waits: list[float] = []

        def wait(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(0.2)

        with make_client(sb, max_retry_after=60, sleep=wait) as c:
            ack = c.post_batch(CAMPAIGN, "r1", 0, payload())
        assert ack.accepted == 3 and ack.retries.get("429", 0) >= 1 and waits[0] == 1.0


def test_connections_over_the_cap_get_503_at_once() -> None:
    with EspSandbox(TOKEN, limits=Limits(max_connections=2)) as sb:
        held = [socket.create_connection((sb.host, sb.port)) for _ in range(2)]
        time.sleep(0.2)
        with socket.create_connection((sb.host, sb.port), timeout=5) as extra:
            status, hdrs, err = read_response(extra)
            assert (status, hdrs["retry-after"]) == (503, "1") and "connections" in err["error"]
        for sock in held:
            sock.close()
        time.sleep(0.3)
        with httpx.Client(base_url=sb.url) as http:
            assert post(http, body()).status_code == 202


# -- per-field limits ------------------------------------------------------------------------
LONG = {"run_id": 64, "template_id": 256, "cell": 64, "offer_code": 64, "field": 1000}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda b: b.update(run_id="r" * 65), "run_id: longer than 64 characters"),
        (lambda b: b.update(template_id="t" * 257), "template_id: longer than 256 characters"),
        (lambda b: b.update(send_at="2027-03-01T14:00:00" + "0" * 60), "send_at: longer than 64"),
        (lambda b: b.update(batch_seq=2**63), "batch_seq: must be an integer from 0 to"),
        (lambda b: b["recipients"][1].update(cell="c" * 65),
         "recipients[1].cell: longer than 64 characters"),
        (lambda b: b["recipients"][1].update(offer_code="o" * 65),
         "recipients[1].offer_code: longer than 64 characters"),
        (lambda b: b["recipients"][1].update(customer_id=2**63),
         "recipients[1].customer_id: must be a 64-bit integer"),
        (lambda b: b["recipients"][1]["fields"].update(first_name="x" * 1001),
         "recipients[1].fields.first_name: longer than 1000 characters"),
        (lambda b: b["recipients"][1]["fields"].update({f"f{i}": i for i in range(32)}),
         "recipients[1].fields: more than 32 fields"),
        (lambda b: b["recipients"][1]["fields"].update({"n" * 65: "x"}),
         "recipients[1].fields: a field name is longer than 64 characters"),
    ],
)
def test_fields_over_their_limit_are_400_naming_the_field(
    sandbox: EspSandbox, http: httpx.Client, change: Any, error: str
) -> None:
    b = body()
    change(b)
    resp = post(http, b)
    assert resp.status_code == 400 and resp.json()["error"].startswith(error), resp.text
    assert "xxxxxxxx" not in resp.text  # the value is never echoed
    assert sandbox.deliveries(CAMPAIGN, "r1") == {}


def test_fields_at_their_limit_are_accepted(sandbox: EspSandbox, http: httpx.Client) -> None:
    b = body(n=2)
    b.update(run_id="r" * 64, template_id="t" * 256, batch_seq=2**63 - 1)
    r = b["recipients"][1]
    r.update(cell="c" * 64, offer_code="o" * 64, customer_id=2**63 - 1)
    r["fields"] = {f"{i:0>64}": "\u00e9" * 1000 for i in range(32)}
    resp = post(http, b, key="at-the-limit")
    assert resp.status_code == 202, resp.text
    assert sandbox.deliveries(CAMPAIGN, "r" * 64) == {"0": 1, str(2**63 - 1): 1}


def test_a_50_mb_field_is_never_accepted(sandbox: EspSandbox, http: httpx.Client) -> None:
    b = body()
    b["recipients"][0]["fields"]["first_name"] = "x" * 50_000_000
    resp = post(http, b)
    assert resp.status_code == 413 and resp.json()["error"].startswith("body: ")
    b["recipients"][0]["fields"]["first_name"] = "x" * 3_000_000  # under the body limit
    resp = post(http, b)
    assert resp.status_code == 400
    assert resp.json()["error"] == "recipients[0].fields.first_name: longer than 1000 characters"


def test_an_address_over_254_characters_is_rejected_not_stored(
    sandbox: EspSandbox, http: httpx.Client
) -> None:
    b = body(n=2)
    b["recipients"][1]["address"] = "a" * 64 + "@" + ("b" * 60 + ".") * 3 + "example.com"  # 259
    b["recipients"].append(recipient(2, address="a" * 3_000_000 + "@example.com"))
    ack = post(http, b).json()
    assert ack == {"batch_id": ack["batch_id"], "accepted": 1, "rejected": [
        {"customer_id": 1, "reason": "invalid_address"},
        {"customer_id": 2, "reason": "invalid_address"}]}
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1}


def test_limits_are_checked() -> None:
    assert Limits().largest_recipient_bytes() < Limits().max_body_bytes // 19
    with pytest.raises(ValueError, match="max_body_bytes must be at least 219524 "):
        Limits(max_body_bytes=200_000)
    assert Limits(max_body_bytes=219_524, max_fields=32).max_body_bytes == 219_524
    with pytest.raises(ValueError, match="read_timeout must be > 0"):
        Limits(read_timeout=0)
    with pytest.raises(ValueError, match="max_inflight_body_bytes"):
        Limits(max_inflight_body_bytes=1_000_000)
    with pytest.raises(ValueError, match="max_batch"):
        EspSandbox(TOKEN, max_batch=0)


# -- a body-size 413 of a valid batch: the client splits it ----------------------------------
def test_client_gets_413_for_a_large_body_not_a_broken_connection() -> None:
    """The sandbox answers before reading a body it refuses; the client still reads the 413."""
    big = payload(n=1000)
    for r in big["recipients"]:
        r["fields"]["first_name"] = "y" * 1000  # ~1.1 MB in all
    with EspSandbox(TOKEN, limits=Limits(max_body_bytes=500_000)) as sb, make_client(sb) as c:
        for _ in range(20):
            with pytest.raises(BatchTooLarge) as err:
                c.post_batch(CAMPAIGN, "r1", 0, big)
            assert err.value.recipients == 1000
        assert sb.stats()["requests"] == 20 and sb.deliveries(CAMPAIGN, "r1") == {}


def test_a_valid_batch_over_the_body_limit_is_split_and_delivered_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    migrations.upgrade(engine)
    n = 2500
    with engine.begin() as conn:
        conn.execute(sa.insert(audience), [
            {"run_id": "big", "customer_id": i, "email": f"u{i}@example.com",
             "address_key": f"u{i}@example.com", "first_name": "Ada" * 300,  # 900 characters
             "outcome": "send", "cell": "A", "offer_code": "W10", "is_seed": False}
            for i in range(1, n + 1)
        ])
    with EspSandbox(TOKEN, limits=Limits(max_body_bytes=450_000)) as sb, make_client(sb) as c:
        report = send_audience(engine, c, campaign_id=CAMPAIGN, run_id="big", template_id="t",
                               send_at=None, batch_size=1000, fields=["first_name"], fallbacks={})
        assert sb.deliveries(CAMPAIGN, "big") == {str(i): 1 for i in range(1, n + 1)}
        assert sb.stats()["status_413"] >= 3  # every 1,000-recipient batch was too large
        keys = {b["key"] for b in sb.batches(CAMPAIGN, "big")}
        # 1,000 recipients halved twice (500 are still too large), the last 500 once.
        assert keys == {f"big:batch-{q}.{a}.{b}" for q in range(2) for a in (0, 1) for b in (0, 1)} | {
            "big:batch-2.0", "big:batch-2.1"}
    assert report.accepted == n and report.split == 3
    engine.dispose()


# -- the flood of the issue, measured on a sandbox process -------------------------------
def _vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def flood_peak_rss(
    python_path: str, *, token: str, posts: int = 6, size: int = 60_000_000
) -> dict[str, Any]:
    """Start a sandbox process, POST `posts` bodies of `size` bytes at once with `token`.

    Returns the process's RSS before and its peak (VmHWM) after, in MB, and each
    answer's status line. `python_path` is the campaignops to run (so the same
    flood can be measured on an older checkout).
    """
    env = {**os.environ, "PYTHONPATH": python_path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignops.esp.sandbox", "--port", "0", "--token", "the-token"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=python_path,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().split()[-1].split("//")[1].split(":")
        time.sleep(0.3)
        before = _vm_kb(proc.pid, "VmRSS")
        answers: list[str] = [""] * posts

        def attack(i: int) -> None:
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(
                    f"POST {BATCHES} HTTP/1.1\r\nHost: esp\r\nAuthorization: Bearer {token}\r\n"
                    f"Idempotency-Key: k{i}\r\nContent-Length: {size}\r\n\r\n".encode()
                )
                chunk = b"x" * (1 << 20)
                with contextlib.suppress(OSError):  # the server may close before the end
                    for _ in range(size >> 20):
                        sock.sendall(chunk)
                    sock.sendall(chunk[: size % len(chunk)])
                try:
                    answers[i] = sock.recv(4096).split(b"\r\n", 1)[0].decode()
                except OSError as exc:
                    answers[i] = type(exc).__name__

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(posts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = _vm_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"rss_before_mb": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "answers": answers}


@pytest.mark.parametrize(("token", "status"), [("wrong-token", "401"), ("the-token", "413")])
def test_six_60_mb_posts_leave_the_sandbox_memory_flat(token: str, status: str) -> None:
    """The issue's flood: 6 concurrent 60 MB POSTs (before: 343 MB peak, every body read)."""
    root = str(Path(__file__).resolve().parents[1])
    got = flood_peak_rss(root, token=token)
    assert got["answers"] == [f"HTTP/1.1 {status} " + (
        "Unauthorized" if status == "401" else "Request Entity Too Large")] * 6
    assert got["peak_rss_mb"] - got["rss_before_mb"] < 25, got


def test_a_body_of_tiny_values_is_refused_before_parsing(sandbox: EspSandbox) -> None:
    """A million `{}` parse to ~27x their bytes: more values than a batch can hold is 413."""
    tiny = b'{"recipients":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    with httpx.Client(base_url=sandbox.url) as http:
        resp = http.post(BATCHES, content=tiny, headers=headers())
        assert resp.status_code == 413
        assert resp.json()["error"].startswith("body: more JSON values than 1000 recipients")
        # Commas inside strings are not values: a batch full of them is parsed and accepted.
        b = body(n=1000)
        for r in b["recipients"]:
            r["fields"] = {"note": "," * 900}
        assert post(http, b).status_code == 202
    assert len(sandbox.deliveries(CAMPAIGN, "r1")) == 1000
