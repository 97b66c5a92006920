"""Stage-triggered campaigns: a brief with ``audience.entered_stage`` reaches each entry once.

Who is in a run is decided in SQL from the stage history and what the campaign already did,
never from the event that started the run (an event may come twice, late, or collapsed):

- a customer is a candidate for an entry into the stage (a ``co_lifecycle_history`` row
  after the campaign's watermark) that this campaign has not reached since: no contact
  history row and no holdout row of the campaign at or after the entry;
- minus everyone in the audience (send or control) of another run of the campaign still in
  flight (not final): they are that run's;
- segmentations of one campaign are serialised by a write to the campaign's watermark row
  at the start of the segmentation's transaction;
- when a run has written its contact history the watermark moves to the last entry it
  reached: a later run reads only the history after it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops import runs
from campaignops.brief import Brief
from campaignops.schema import (
    audience,
    contact_history,
    customers,
    holdout_contacts,
    lifecycle_history,
    lifecycle_watermarks,
)
from campaignops.schema import runs as runs_table


def _mark(campaign_id: str) -> Any:
    """The campaign's watermark: the last history row it has reached (0 before its first send)."""
    w = lifecycle_watermarks.c
    return sa.func.coalesce(
        sa.select(w.last_history_id).where(w.campaign_id == campaign_id).scalar_subquery(), 0)


def entry_filter(brief: Brief, run_id: str | None = None) -> Any:
    """Over customers: entered the brief's stage after the watermark and not reached by the campaign since.

    None for a brief that is not stage-triggered.
    """
    stage = brief.audience.entered_stage
    if stage is None:
        return None
    h, ch, hc, a, r = (lifecycle_history.c, contact_history.c, holdout_contacts.c, audience.c,
                       runs_table.c)
    campaign = brief.campaign_id
    reached = sa.or_(
        sa.exists().where(ch.customer_id == h.customer_id, ch.campaign_id == campaign, ch.sent_at >= h.at),
        sa.exists().where(hc.customer_id == h.customer_id, hc.campaign_id == campaign,
                          hc.contacted_at >= h.at))
    entries = sa.select(h.customer_id).where(h.to_stage == stage, h.history_id > _mark(campaign), ~reached)
    others = sa.select(r.run_id).where(r.campaign_id == campaign, r.dry_run == sa.false(),
                                       r.status.not_in(sorted(runs.FINAL)))
    if run_id is not None:
        others = others.where(r.run_id != run_id)
    in_flight = sa.select(a.customer_id).where(a.run_id.in_(others), a.outcome.in_(("send", "control")),
                                                a.customer_id.is_not(None))
    cid = customers.c.customer_id
    return sa.and_(cid.in_(entries), cid.not_in(in_flight))


def _ensure_row(engine: Engine, brief: Brief) -> None:
    w = lifecycle_watermarks.c
    with engine.begin() as conn:
        if conn.execute(sa.select(w.campaign_id).where(w.campaign_id == brief.campaign_id)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(lifecycle_watermarks).values(
                        campaign_id=brief.campaign_id, stage=brief.audience.entered_stage, last_history_id=0,
                        updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)))
            except sa.exc.IntegrityError:
                pass  # another run of the campaign made it first


def prepare(engine: Engine, brief: Brief) -> None:
    """Make sure a stage-triggered campaign has its watermark row (before its segmentation)."""
    if brief.audience.entered_stage is not None:
        _ensure_row(engine, brief)


def serialise(conn: Connection, brief: Brief, run_id: str) -> None:
    """First write of a stage-triggered segmentation's transaction: one segmentation per campaign at a time."""
    if brief.audience.entered_stage is None:
        return
    w = lifecycle_watermarks.c
    conn.execute(sa.update(lifecycle_watermarks).where(w.campaign_id == brief.campaign_id).values(
        claimed_by=run_id[:64], claimed_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)))


def advance(engine: Engine, brief: Brief, run_id: str) -> int:
    """After a run's contact history: the watermark to the last entry the run reached; the new watermark."""
    stage = brief.audience.entered_stage
    w, h, a = lifecycle_watermarks.c, lifecycle_history.c, audience.c
    if stage is None:
        return 0
    with engine.begin() as conn:
        reached = sa.select(sa.func.max(h.history_id)).where(
            h.to_stage == stage, h.customer_id.in_(sa.select(a.customer_id).where(
                a.run_id == run_id, a.outcome.in_(("send", "control")), a.customer_id.is_not(None))))
        top = conn.execute(reached).scalar_one()
        if top is not None:
            conn.execute(sa.update(lifecycle_watermarks).where(
                w.campaign_id == brief.campaign_id, w.last_history_id < int(top)).values(
                last_history_id=int(top), updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
                claimed_by=None, claimed_at=None))
        mark = conn.execute(sa.select(w.last_history_id).where(w.campaign_id == brief.campaign_id)).scalar_one()
    return int(mark)
