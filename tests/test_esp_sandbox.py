"""The ESP sandbox speaks ESP_CONTRACT.md over real HTTP; the client follows it."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from campaignops.errors import HandoffError
from campaignops.esp import BatchTooLarge, EspClient, EspSandbox, Faults, idempotency_key

pytestmark = pytest.mark.unit

TOKEN = "sandbox-token-5f1c9e"
CAMPAIGN = "winback"


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
