"""The ESP contract's SMS batch endpoint, sandbox and client, over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from campaignops.errors import HandoffError
from campaignops.esp import EspClient, EspSandbox, Faults

pytestmark = pytest.mark.unit

TOKEN = "sms-sandbox-token-7a2e"
CAMPAIGN = "flash"
SMS_BATCHES = f"/v1/campaigns/{CAMPAIGN}/sms/batches"
TEXT = "Hi {first_name}, 20% off today. Reply STOP to opt out"


def recipient(i: int, phone: str | None = None, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"customer_id": i, "phone": phone or f"+4479111{i:05d}", "cell": "all",
                         "offer_code": None, "fields": {"first_name": "Ada"}, "seed": False,
                         "segments": 1}
    r.update(kw)
    return r


def payload(n: int = 3, start: int = 0, **kw: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"send_at": "2027-03-01T14:00:00Z", "template_id": "flash-sms",
                         "text": TEXT, "max_segments": 1,
                         "recipients": [recipient(i) for i in range(start, start + n)]}
    p.update(kw)
    return p


def client_for(sb: EspSandbox, **kw: Any) -> EspClient:
    opts: dict[str, Any] = {"backoff_base": 0.001, "backoff_cap": 0.005, "max_retry_after": 0.05}
    opts.update(kw)
    return EspClient(sb.url, SecretStr(TOKEN), **opts)


@pytest.fixture
def sandbox() -> Iterator[EspSandbox]:
    with EspSandbox(TOKEN) as sb:
        yield sb


def test_an_sms_batch_is_accepted_counted_in_segments_and_replayed(sandbox: EspSandbox) -> None:
    with client_for(sandbox) as client:
        ack = client.post_batch(CAMPAIGN, "r1", 0, payload(), channel="sms")
        assert (ack.accepted, ack.rejected, ack.segments, ack.replayed) == (3, [], 3, False)
        again = client.post_batch(CAMPAIGN, "r1", 0, payload(), channel="sms")
        assert again.replayed and again.batch_id == ack.batch_id and again.segments == 3
        assert client.run_summary(CAMPAIGN, "r1") == {
            "batches": 1, "accepted": 3, "rejected": 0, "segments": 3}
    rows = sandbox.sms_rows(CAMPAIGN, "r1")
    assert [(r["customer_id"], r["segments"], r["send_at"]) for r in rows] == [
        (i, 1, "2027-03-01T14:00:00Z") for i in range(3)]
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


def test_each_recipient_has_its_own_outcome(sandbox: EspSandbox) -> None:
    long_name = "Bartholomew-Maximilian " * 6  # the message goes past 160 characters
    recipients = [
        recipient(1),
        recipient(2, phone="07911 123456"),  # not E.164
        recipient(3, fields={"first_name": long_name}, segments=2),
        recipient(4, segments=2),  # the client counts 2, the ESP 1
        recipient(5, fields={"first_name": "Zoë"}),  # still GSM-7 (ë is not: UCS-2, 70 chars)
        recipient(6, send_at="2027-03-02T08:00:00Z"),  # deferred: its own send time
    ]
    with client_for(sandbox) as client:
        ack = client.post_batch(CAMPAIGN, "r1", 0, payload(recipients=recipients), channel="sms")
    assert ack.accepted == 3 and ack.segments == 3
    assert ack.rejected == [{"customer_id": 2, "reason": "invalid_phone"},
                            {"customer_id": 3, "reason": "too_many_segments"},
                            {"customer_id": 4, "reason": "segments_mismatch"}]
    rows = {r["customer_id"]: r for r in sandbox.sms_rows(CAMPAIGN, "r1")}
    assert set(rows) == {1, 5, 6}
    assert rows[6]["send_at"] == "2027-03-02T08:00:00Z"
    assert rows[1]["send_at"] == "2027-03-01T14:00:00Z"


def test_a_two_segment_limit_lets_a_longer_message_through(sandbox: EspSandbox) -> None:
    long_name = "Bartholomew-Maximilian " * 6
    with client_for(sandbox) as client:
        ack = client.post_batch(CAMPAIGN, "r1", 0, payload(
            max_segments=2, recipients=[recipient(1, fields={"first_name": long_name}, segments=2)]),
            channel="sms")
    assert (ack.accepted, ack.segments) == (1, 2)


def test_one_key_one_body_across_both_endpoints(sandbox: EspSandbox) -> None:
    with client_for(sandbox) as client:
        client.post_batch(CAMPAIGN, "r1", 0, payload(), channel="sms")
        with pytest.raises(HandoffError, match="422"):
            client.post_batch(CAMPAIGN, "r1", 0, payload(n=2), channel="sms")
        email = {"send_at": None, "template_id": "t",
                 "recipients": [{"customer_id": 1, "address": "a@example.com"}]}
        with pytest.raises(HandoffError, match="422"):  # the same key on the e-mail endpoint
            client.post_batch(CAMPAIGN, "r1", 0, email)
        with pytest.raises(ValueError, match="channel"):
            client.post_batch(CAMPAIGN, "r1", 1, payload(), channel="fax")
    assert sandbox.deliveries(CAMPAIGN, "r1") == {"0": 1, "1": 1, "2": 1}


@pytest.mark.parametrize(("change", "named"), [
    ({"text": ""}, "text: must be a non-empty string"),
    ({"text": "x" * 1601}, "text: longer than 1600 characters"),
    ({"max_segments": 0}, "max_segments: must be an integer from 1 to 10"),
    ({"max_segments": None}, "max_segments"),
    ({"recipients": [{**recipient(1), "phone": 4479111}]}, "recipients[0].phone: must be a string"),
    ({"recipients": [recipient(1, segments=11)]}, "recipients[0].segments"),
    ({"recipients": [recipient(1, send_at="tomorrow")]}, "recipients[0].send_at: not an ISO-8601 time"),
    ({"recipients": [recipient(1, address="a@example.com")]}, "recipients[0].address: unknown field"),
    ({"recipients": [recipient(1, customer_id=None)]}, "recipients[0].customer_id: required unless seed"),
])
def test_a_malformed_sms_batch_is_400_naming_the_field_not_its_value(
    sandbox: EspSandbox, change: dict[str, Any], named: str
) -> None:
    body = {"run_id": "r1", "batch_seq": 0, **payload(), **change}
    with httpx.Client(base_url=sandbox.url) as http:
        resp = http.post(SMS_BATCHES, json=body, headers={
            "Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "r1:batch-0"})
    assert resp.status_code == 400
    assert named in resp.json()["error"]
    assert "+4479111" not in resp.text
    assert sandbox.deliveries(CAMPAIGN, "r1") == {}


@pytest.mark.parametrize("faults", [
    {"rate_limit": 0.5}, {"error_before_store": 0.5}, {"error_after_store": 0.5},
    {"drop_connection": 0.5}, {"rate_limit": 0.15, "error_before_store": 0.15,
                               "error_after_store": 0.15, "drop_connection": 0.15},
], ids=["429", "503-before", "500-after", "drop", "mix"])
def test_the_sms_endpoint_has_the_same_faults_and_the_client_gets_exactly_once(
    faults: dict[str, Any]
) -> None:
    with EspSandbox(TOKEN, faults=Faults(seed=3, **faults)) as sb:
        with client_for(sb, max_attempts=60) as client:
            acks = [client.post_batch(CAMPAIGN, "r1", s, payload(n=5, start=5 * s), channel="sms")
                    for s in range(10)]
        assert sb.deliveries(CAMPAIGN, "r1") == {str(i): 1 for i in range(50)}
        assert sum(a.accepted for a in acks) == 50 and sum(a.segments for a in acks) == 50
        stats = sb.stats("r1")
        assert any(k.startswith("fault_") for k in stats), stats
        assert sb.run_summary(CAMPAIGN, "r1") == {"batches": 10, "accepted": 50, "rejected": 0,
                                                  "segments": 50}


def test_an_sms_batch_over_max_batch_is_413() -> None:
    with EspSandbox(TOKEN, max_batch=2) as sb, client_for(sb) as client:
        with pytest.raises(HandoffError, match="413"):
            client.post_batch(CAMPAIGN, "r1", 0, payload(n=3), channel="sms")


def test_error_texts_carry_no_phone_number() -> None:
    with EspSandbox(TOKEN) as sb, client_for(sb) as client:
        assert "<phone>" in client._clean("recipient +44 7911 123456 refused")
        assert "+447911123456" not in client._clean("recipient +447911123456 refused")
        assert client._clean("body: 4194304 bytes") == "body: 4194304 bytes"
