"""Stage-triggered campaigns: each entry into the stage is in exactly one run of the brief."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaignops import runs
from campaignops.brief import Brief, load_brief
from campaignops.lifecycle import trigger
from campaignops.lifecycle.model import load_model
from campaignops.lifecycle.scoring import score_customers
from campaignops.schema import audience, contact_history, customers, holdout_contacts
from campaignops.segmentation import segment
from campaignops.warehouse import Warehouse, open_warehouse
from tests.factories import build_warehouse, customer

ROOT = Path(__file__).resolve().parents[1]
BRIEF = ROOT / "examples" / "briefs" / "mql-nurture.yaml"
NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _mql(cid: int, at: dt.datetime) -> dict[str, object]:
    """35 fit points and a fresh open (25): an MQL at 60 when scored at `at`."""
    return customer(cid, lifetime_value=Decimal(600), last_open_at=at, last_purchase_at=None)


def _lead(cid: int) -> dict[str, object]:
    return customer(cid, lifetime_value=Decimal(100), last_open_at=NOW - dt.timedelta(days=3), last_purchase_at=None)


def _run(wh: Warehouse, brief: Brief, run_id: str) -> set[int]:
    """Register and segment a run; the customers it would reach (send or holdout)."""
    runs.register_run(wh.engine, run_id, brief, str(BRIEF), NOW)
    segment(wh, brief, run_id, NOW)
    runs.set_status(wh.engine, run_id, runs.SEGMENTED)
    a = audience.c
    with wh.engine.connect() as conn:
        return set(conn.execute(sa.select(a.customer_id).where(
            a.run_id == run_id, a.outcome.in_(("send", "control")))).scalars())


def _sent(wh: Warehouse, brief: Brief, run_id: str) -> None:
    """What the contact-history step leaves behind for a run: contact rows, holdout rows, SENT."""
    a = audience.c
    with wh.engine.begin() as conn:
        rows = conn.execute(sa.select(a.customer_id, a.outcome).where(
            a.run_id == run_id, a.outcome.in_(("send", "control")))).all()
        sends = [{"customer_id": c, "campaign_id": brief.campaign_id, "run_id": run_id, "channel": "email",
                  "cell": "nurture", "offer_code": None, "sent_at": NOW} for c, o in rows if o == "send"]
        held = [{"run_id": run_id, "campaign_id": brief.campaign_id, "customer_id": c, "channel": "email",
                 "contacted_at": NOW} for c, o in rows if o == "control"]
        if sends:
            conn.execute(sa.insert(contact_history), sends)
        if held:
            conn.execute(sa.insert(holdout_contacts), held)
    trigger.advance(wh.engine, brief, run_id)
    runs.set_status(wh.engine, run_id, runs.SENT, contact_history_written=True)


@pytest.mark.unit
def test_each_mql_entry_is_in_exactly_one_run(db_url: str) -> None:
    t1 = NOW - dt.timedelta(hours=2)
    engine = build_warehouse(db_url, [*(_mql(i, t1) for i in range(1, 11)), *(_lead(i) for i in range(11, 21))])
    wh = open_warehouse(db_url)
    brief = load_brief(BRIEF)
    model = load_model()
    assert score_customers(engine, model, t1).entered["mql"] == 10
    first = _run(wh, brief, "run-1")
    assert first == set(range(1, 11))
    # The event fires again while run 1 waits for its approval: the overlapping run gets nobody.
    assert _run(wh, brief, "run-2") == set()
    _sent(wh, brief, "run-1")
    assert _run(wh, brief, "run-3") == set()  # and after run 1 sent, nobody either
    # New MQLs at the next scoring: only they are in the next run.
    t2 = NOW - dt.timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.customer_id.in_([11, 12, 13]))
                     .values(lifetime_value=Decimal(600), last_open_at=t2))
    assert score_customers(engine, model, t2).entered == {"mql": 3}
    assert _run(wh, brief, "run-4") == {11, 12, 13}
    wh.dispose()
    engine.dispose()


@pytest.mark.unit
def test_a_run_that_never_sent_leaves_its_entrants_to_the_next_run(db_url: str) -> None:
    t1 = NOW - dt.timedelta(hours=2)
    engine = build_warehouse(db_url, [*(_mql(i, t1) for i in range(1, 6)), _lead(6)])
    wh = open_warehouse(db_url)
    brief = load_brief(BRIEF)
    score_customers(engine, load_model(), t1)
    assert _run(wh, brief, "run-1") == set(range(1, 6))
    runs.set_status(wh.engine, "run-1", runs.REJECTED)  # rejected: nobody was reached
    assert _run(wh, brief, "run-2") == set(range(1, 6))
    _sent(wh, brief, "run-2")
    assert _run(wh, brief, "run-3") == set()
    wh.dispose()
    engine.dispose()


@pytest.mark.unit
def test_entered_stage_is_not_for_a_correction() -> None:
    data = load_brief(BRIEF).model_dump(mode="json")
    data["audience"]["missed_by"] = "20261101T120000-abcdef12"
    with pytest.raises(ValueError, match="entered_stage is for a lifecycle-triggered campaign"):
        Brief.model_validate(data)
