"""Exactly-once for the SMS endpoint: the sender SIGKILLed at random points and rerun, under
every fault of the sandbox (as tests/test_handoff_faults.py does for e-mail).

A child process runs ``send_audience`` with an SMS message against the sandbox's SMS
endpoint; it is killed a few times at random moments and rerun until a run completes.
Then every approved recipient was accepted exactly once (customer 17's number is not
E.164 and customer 23's message is too long: both rejected, never retried), the batches
of a deferred country carry its send time, the ledger holds every batch once, and the
counts and the segments reconcile.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import traceback
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from campaignops.esp import EspClient, EspSandbox, Faults
from campaignops.handoff.batches import SmsMessage, iter_batches
from campaignops.handoff.http import reconcile, send_audience
from campaignops.schema import audience, ledger
from campaignops.warehouse import make_engine
from tests.test_handoff import TOKEN, prepare
from tests.test_handoff_faults import (
    BATCH_SIZE,
    BATCHES,
    KINDS,
    MIX,
    RUN,
    kill_and_rerun,
    write_report,
)

pytestmark = pytest.mark.unit

CAMPAIGN = "flash-sms"
RECIPIENTS = 3100  # 31 batches of 100, as in the e-mail suite
INVALID_PHONE, TOO_LONG = 17, 23
SEND_AT = "2027-03-02T15:00:00Z"
DEFERRED = {"US": "2027-03-02T18:00:00Z"}
MESSAGE = SmsMessage("Hi {first_name}, 20% off today only. Reply STOP to opt out", 1, DEFERRED)
CASES = ["kill-only", "rate_limit", "error_before_store", "error_after_store", "drop_connection",
         "mix-1", "mix-2", "mix+split"]
FAULTS: dict[str, tuple[dict[str, Any], int]] = {
    "kill-only": ({}, 1000), "rate_limit": ({"rate_limit": 0.3}, 1000),
    "error_before_store": ({"error_before_store": 0.3}, 1000),
    "error_after_store": ({"error_after_store": 0.3}, 1000),
    "drop_connection": ({"drop_connection": 0.3}, 1000),
    "mix-1": (MIX, 1000), "mix-2": (MIX, 1000), "mix+split": (MIX, 60),
}


def populate_sms(engine: Engine, n: int = RECIPIENTS) -> None:
    """n SMS 'send' recipients (every third in the US, deferred), plus control rows."""
    rows = []
    for i in range(1, n + 101):
        phone = "07911 17" if i == INVALID_PHONE else f"+4479{i:08d}"
        rows.append({
            "run_id": RUN, "customer_id": i, "email": None, "address_key": phone,
            "first_name": "Bartholomew-Maximilian " * 5 if i == TOO_LONG else f"Name{i}",
            "last_name": None, "language": "en", "country": "US" if i % 3 == 0 else "GB",
            "loyalty_tier": "gold", "outcome": "send" if i <= n else "control", "reason": None,
            "cell": "all" if i <= n else None, "offer_code": None, "is_seed": False,
        })
    with engine.begin() as conn:
        conn.execute(audience.insert(), rows)


def child_send_sms(warehouse_url: str, esp_url: str, token: str, max_in_flight: int,
                   report_path: str) -> None:
    """What one sending process does: send the SMS run, reconcile, write a report."""
    logging.getLogger("campaignops").setLevel(logging.ERROR)
    try:
        engine = make_engine(warehouse_url)
        with EspClient(esp_url, SecretStr(token), timeout=5.0, max_attempts=60, backoff_base=0.001,
                       backoff_cap=0.01, max_retry_after=0.02) as client:
            report = send_audience(
                engine, client, campaign_id=CAMPAIGN, run_id=RUN, template_id="flash-sms",
                send_at=None, batch_size=BATCH_SIZE, fields=["first_name"], max_in_flight=max_in_flight,
                sms=MESSAGE,
            )
            rec = reconcile(engine, client, CAMPAIGN, RUN, expected_segments=expected_segments(engine))
        out: dict[str, Any] = {"report": report.as_dict(), "matches": rec.matches}
    except BaseException as exc:  # the parent shows it
        out = {"error": "".join(traceback.format_exception(exc))[-3000:]}
    write_report(report_path, out)


def expected_segments(engine: Engine) -> int:
    """The segments of the messages the ESP should accept (all but the two it rejects)."""
    return sum(r["segments"] for _, batch in iter_batches(engine, RUN, 500, ["first_name"], sms=MESSAGE)
               for r in batch if r["customer_id"] not in (INVALID_PHONE, TOO_LONG))


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "httpcore"])
    return ctx


@pytest.mark.parametrize("case", CASES)
def test_killed_sms_sender_reruns_to_exactly_once(
    forkserver: multiprocessing.context.ForkServerContext, tmp_path: Path, case: str
) -> None:
    settings, max_batch = FAULTS[case]
    seed = 2 if case == "mix-2" else 1
    db_file = tmp_path / "warehouse.db"
    url = f"sqlite:///{db_file}"
    engine = prepare(url)
    populate_sms(engine)
    rng = random.Random(f"sms/{case}")
    max_in_flight = rng.choice([1, 4, 8])
    sb = EspSandbox(TOKEN, faults=Faults(seed=seed, **settings), max_batch=max_batch).start()
    try:
        outcome = kill_and_rerun(forkserver, sb, url, db_file, tmp_path, rng, max_in_flight,
                                 child_send_sms)
        got = sb.deliveries(CAMPAIGN, RUN)
        want = {str(i): 1 for i in range(1, RECIPIENTS + 1) if i not in (INVALID_PHONE, TOO_LONG)}
        assert got == want, ({k: c for k, c in got.items() if c > 1}, sorted(set(want) - set(got))[:10])
        rows = sb.sms_rows(CAMPAIGN, RUN)
        assert {r["send_at"] for r in rows if r["customer_id"] % 3 == 0} == {DEFERRED["US"]}
        assert {r["send_at"] for r in rows if r["customer_id"] % 3} == {None}  # the batch's: now
        assert all(r["phone"].startswith("+4479") for r in rows)

        with engine.connect() as conn:
            seqs = conn.execute(sa.select(ledger.c.batch_seq).where(ledger.c.run_id == RUN)).scalars().all()
        assert sorted(seqs) == list(range(BATCHES))
        assert outcome.final["matches"] is True
        with EspClient(sb.url, SecretStr(TOKEN)) as client:
            rec = reconcile(engine, client, CAMPAIGN, RUN, expected_segments=expected_segments(engine))
        assert rec.matches and (rec.approved, rec.accepted, rec.rejected) == (RECIPIENTS, RECIPIENTS - 2, 2)
        assert rec.segments == rec.expected_segments == RECIPIENTS - 2
        with engine.connect() as conn:
            reasons = sorted(r["reason"] for (t,) in conn.execute(
                sa.select(ledger.c.rejections).where(ledger.c.run_id == RUN, ledger.c.rejections.is_not(None)))
                for r in json.loads(t))
        assert reasons == ["invalid_phone", "too_many_segments"]

        assert outcome.kills >= 1
        stats = sb.stats(RUN)
        fired = {kind for kind, counters in KINDS.items() if any(stats.get(c, 0) for c in counters)}
        if case in KINDS:
            assert fired == {case}, stats
        if case.startswith("mix"):
            assert len(fired) >= 3, stats
        if case == "mix+split":
            assert stats.get("status_413", 0) >= BATCHES - 1
    finally:
        sb.stop()
        engine.dispose()
