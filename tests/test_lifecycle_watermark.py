"""The scoring watermark: only changed customers are rescored, exactly as a full scoring would; no overlap."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from campaignops.errors import ScoringInProgress
from campaignops.lifecycle.model import load_model
from campaignops.lifecycle.scoring import CLAIM_STALE, SCORING_KEY, claim_scoring, score_customers
from campaignops.schema import (
    customers,
    engagement_events,
    lifecycle_history,
    lifecycle_scores,
    lifecycle_watermarks,
)
from tests.factories import AS_OF, build_warehouse, customer

KINDS = ("email_open", "email_click", "web_visit", "form_submit", "purchase")


def _warehouse(url: str, n: int = 60) -> sa.engine.Engine:
    rows = [customer(i, country=("US", "FR", "DE")[i % 3], email_opt_in=i % 2 == 0,
                     lifetime_value=Decimal(100 * (i % 9)), last_purchase_at=None) for i in range(1, n + 1)]
    engine = build_warehouse(url, rows)
    with engine.begin() as conn:
        engagement_events.create(conn)
        conn.execute(sa.insert(engagement_events), [
            {"customer_id": i, "event_type": KINDS[(i + j) % 4], "occurred_at": AS_OF - dt.timedelta(days=(i * j) % 40)}
            for i in range(1, n + 1) for j in range(i % 7)])
    return engine


def _scores(engine: sa.engine.Engine) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {r.customer_id: tuple(r) for r in conn.execute(sa.select(lifecycle_scores))}


def _hist(engine: sa.engine.Engine, scoring_id: str) -> list[tuple[Any, ...]]:
    h = lifecycle_history.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(h.customer_id, h.from_stage, h.to_stage, h.reason)
                                               .where(h.scoring_id == scoring_id).order_by(h.customer_id))]


@pytest.mark.unit
def test_rescore_without_new_inputs_writes_nothing(db_url: str) -> None:
    engine = _warehouse(db_url)
    first = score_customers(engine, load_model(), AS_OF)
    assert not first.incremental and first.rescored == first.scored == 60
    before = _scores(engine)
    again = score_customers(engine, load_model(), AS_OF + dt.timedelta(hours=1))
    assert again.incremental and again.rescored == 0 and again.entered == {}
    assert _scores(engine) == before and _hist(engine, again.scoring_id) == []
    with engine.connect() as conn:
        mark = conn.execute(sa.select(lifecycle_watermarks.c.as_of)
                            .where(lifecycle_watermarks.c.campaign_id == SCORING_KEY)).scalar_one()
    assert mark == AS_OF + dt.timedelta(hours=1)
    engine.dispose()


@pytest.mark.unit
def test_new_events_for_k_customers_rescore_exactly_those_as_a_full_scoring_would(db_url: str) -> None:
    engine = _warehouse(db_url)
    model = load_model()
    score_customers(engine, model, AS_OF)
    before = _scores(engine)
    later = AS_OF + dt.timedelta(hours=1)
    touched = {3, 17, 41}
    with engine.begin() as conn:
        conn.execute(sa.insert(engagement_events), [
            {"customer_id": c, "event_type": "form_submit", "occurred_at": AS_OF + dt.timedelta(minutes=30)}
            for c in touched])
        conn.execute(sa.update(customers).where(customers.c.customer_id == 46)
                     .values(lifetime_value=Decimal(900)))  # fit +15
    inc = score_customers(engine, model, later)
    after = _scores(engine)
    assert inc.incremental and inc.rescored == len(touched) + 1
    assert {c for c in after if after[c] != before[c]} == touched | {46}
    # A full scoring at the same moment agrees with the incremental one: no stage changes, same scores.
    full = score_customers(engine, model, later, full=True)
    assert not full.incremental and full.rescored == 60 and _hist(engine, full.scoring_id) == []
    with engine.connect() as conn:
        redone = {r.customer_id: r for r in conn.execute(sa.select(lifecycle_scores))}
    for c, row in after.items():
        assert redone[c].stage == row[2], f"customer {c}"
        carried = row[7] * 0.5 ** ((later - row[4]).total_seconds() / 86400 / 14)  # an untouched row: as of scored_at
        assert redone[c].engagement == pytest.approx(carried, abs=1e-6), f"customer {c}"
        assert redone[c].fit == row[6], f"customer {c}"
    engine.dispose()


@pytest.mark.unit
def test_decay_alone_still_recycles_an_mql(db_url: str) -> None:
    rows = [customer(1, last_open_at=None, last_purchase_at=None, lifetime_value=Decimal(600))]  # fit 35
    engine = build_warehouse(db_url, rows)
    with engine.begin() as conn:
        engagement_events.create(conn)
        conn.execute(sa.insert(engagement_events), [
            {"customer_id": 1, "event_type": "purchase", "occurred_at": AS_OF}])  # 35 + 25 = 60: mql
    model = load_model()
    assert score_customers(engine, model, AS_OF).entered == {"mql": 1}
    later = score_customers(engine, model, AS_OF + dt.timedelta(days=42))  # 35 + 25/8 < 40, no new event
    assert later.incremental and later.backward == 1
    assert _hist(engine, later.scoring_id) == [(1, "mql", "lead", "score_decayed")]
    engine.dispose()


@pytest.mark.unit
def test_a_second_scoring_while_one_holds_the_watermark_is_refused(db_url: str) -> None:
    engine = _warehouse(db_url, n=5)
    score_customers(engine, load_model(), AS_OF)
    before = _scores(engine)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    claim_scoring(engine, "the-other-one", now)
    with pytest.raises(ScoringInProgress):
        score_customers(engine, load_model(), AS_OF + dt.timedelta(days=3))
    assert _scores(engine) == before
    with engine.begin() as conn:  # the other one crashed long ago: its claim is stale
        conn.execute(sa.update(lifecycle_watermarks).values(claimed_at=now - CLAIM_STALE - dt.timedelta(minutes=1)))
    assert score_customers(engine, load_model(), AS_OF + dt.timedelta(days=3)).incremental
    engine.dispose()
