"""The lifecycle in numbers and sales' side of it: the funnel, flows, conversion, time in stage,
acceptance and its SLA. Counts only, computed in the warehouse."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops.errors import LifecycleRefused, NotFound, ScoringInProgress
from campaignops.lifecycle.model import STAGES, LifecycleModel
from campaignops.lifecycle.scoring import claim_scoring, release_scoring
from campaignops.schema import lifecycle_history, lifecycle_scores
from campaignops.sql import age_days

ACCEPTED = "sales_accepted"


@dataclass(frozen=True)
class StageRow:
    """One stage of the funnel report."""

    stage: str
    customers: int
    entered: int
    converted: int
    median_days: float | None

    @property
    def conversion(self) -> float | None:
        """Of those who entered the stage in the period, the share who moved on (forward)."""
        return self.converted / self.entered if self.entered else None


@dataclass(frozen=True)
class Report:
    """The funnel now and the period's flows between stages."""

    since: dt.datetime
    until: dt.datetime
    stages: list[StageRow]
    flows: list[tuple[str, str, int]]

    @property
    def total(self) -> int:
        """Customers scored."""
        return sum(s.customers for s in self.stages)


def _rank(stage: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
    return sa.case(*((stage == s, sa.literal(i)) for i, s in enumerate(STAGES)), else_=sa.literal(-1))


def _by_stage(conn: Connection, q: sa.Select[tuple[Any, int]]) -> dict[str, int]:
    return {str(k): int(n) for k, n in conn.execute(q)}


def _medians(engine: Engine) -> dict[str, float]:
    """Median days a customer stayed in each stage before leaving it (completed stays)."""
    h = lifecycle_history.c
    nxt = sa.func.lead(h.at).over(partition_by=h.customer_id, order_by=h.history_id)
    stays = sa.select(h.to_stage.label("stage"), h.at.label("entered"), nxt.label("left")).subquery("stays")
    dur = age_days(stays.c.entered, stays.c.left)
    ranked = sa.select(
        stays.c.stage, dur.label("d"),
        sa.func.row_number().over(partition_by=stays.c.stage, order_by=dur).label("rn"),
        sa.func.count().over(partition_by=stays.c.stage).label("n"),
    ).where(stays.c.left.is_not(None)).subquery("ranked")
    r = ranked.c
    q = (sa.select(r.stage, sa.func.avg(r.d))
         .where(sa.or_(r.rn == (r.n + 1) // 2, r.rn == (r.n + 2) // 2)).group_by(r.stage))
    with engine.connect() as conn:
        return {str(s): float(v) for s, v in conn.execute(q)}


def lifecycle_report(engine: Engine, since: dt.datetime, until: dt.datetime | None = None) -> Report:
    """Counts per stage now, entries and forward moves per stage and flows in [since, until)."""
    until = until or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    h, s = lifecycle_history.c, lifecycle_scores.c
    period = sa.and_(h.at >= since, h.at < until)
    with engine.connect() as conn:
        now = _by_stage(conn, sa.select(s.stage, sa.func.count()).group_by(s.stage))
        entered = _by_stage(conn, sa.select(h.to_stage, sa.func.count()).where(period).group_by(h.to_stage))
        converted = _by_stage(conn, sa.select(h.from_stage, sa.func.count()).where(
            period, h.from_stage.is_not(None), _rank(h.to_stage) > _rank(h.from_stage)).group_by(h.from_stage))
        flows = [(str(f or "-"), str(t), int(n)) for f, t, n in conn.execute(
            sa.select(h.from_stage, h.to_stage, sa.func.count()).where(period)
            .group_by(h.from_stage, h.to_stage).order_by(sa.func.count().desc()))]
    medians = _medians(engine)
    rows = [StageRow(st, int(now.get(st, 0)), int(entered.get(st, 0)), int(converted.get(st, 0)),
                     medians.get(st)) for st in STAGES]
    return Report(since, until, rows, flows)


@contextmanager
def _no_scoring_meanwhile(engine: Engine) -> Iterator[None]:
    """Hold the scoring's claim while an acceptance writes, so no running scoring overwrites it."""
    holder = f"accept-{uuid.uuid4().hex[:16]}"
    try:
        claim_scoring(engine, holder, dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0))
    except ScoringInProgress:
        raise ScoringInProgress("a lifecycle scoring is running: nothing was accepted; "
                                "accept again when it has finished") from None
    try:
        yield
    finally:
        release_scoring(engine, holder)


def _acceptance(actor: str, to: str) -> tuple[str, str]:
    """Who accepts (trimmed) and the stage one accepts from into `to`, or LifecycleRefused."""
    actor = actor.strip()
    if not actor or len(actor) > 254 or "\n" in actor:
        raise LifecycleRefused("--as: name who accepts (one line, up to 254 characters)")
    if to not in STAGES or STAGES.index(to) == 0:
        raise LifecycleRefused(f"--to: {to} is not a stage to accept into; use one of {', '.join(STAGES[1:])}")
    return actor, STAGES[STAGES.index(to) - 1]


def accept(engine: Engine, customer_id: int, actor: str, to: str = "sql",
           now: dt.datetime | None = None) -> tuple[str, str]:
    """Sales accepts a customer into a manual stage (from the stage before it); (from, to)."""
    actor, need = _acceptance(actor, to)
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    s = lifecycle_scores.c
    with _no_scoring_meanwhile(engine), engine.begin() as conn:
        row = conn.execute(sa.select(s.stage, s.score, s.model_version)
                           .where(s.customer_id == customer_id)).first()
        if row is None:
            raise NotFound(f"customer {customer_id} has no lifecycle score yet: run `campaignops lifecycle score`")
        if row.stage != need:
            raise LifecycleRefused(f"customer {customer_id} is {row.stage}, not {need}: only a {need} "
                                   f"can be accepted into {to}")
        conn.execute(sa.update(lifecycle_scores).where(s.customer_id == customer_id)
                     .values(stage=to, stage_entered_at=now))
        conn.execute(sa.insert(lifecycle_history).values(
            scoring_id=None, customer_id=customer_id, from_stage=need, to_stage=to, score=row.score,
            model_version=row.model_version, reason=ACCEPTED, actor=actor, at=now))
    return need, to


@dataclass(frozen=True)
class BatchAccept:
    """What a batch acceptance did: accepted, and skipped by cause (counts only)."""

    accepted: int
    not_scored: int
    wrong_stage: int
    repeated: int


_batch = sa.Table("co_lifecycle_accept", sa.MetaData(),
                  sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
                  prefixes=["TEMPORARY"])


def accept_many(engine: Engine, customer_ids: list[int], actor: str, to: str = "sql",
                now: dt.datetime | None = None) -> BatchAccept:
    """Sales accepts many at once (one transaction, in SQL): those in the stage before `to`; the rest counted."""
    actor, need = _acceptance(actor, to)
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    unique = sorted(set(customer_ids))
    s, b = lifecycle_scores.c, _batch.c
    with _no_scoring_meanwhile(engine), engine.begin() as conn:
        _batch.drop(conn, checkfirst=True)
        _batch.create(conn)
        for i in range(0, len(unique), 10_000):
            conn.execute(sa.insert(_batch), [{"customer_id": c} for c in unique[i:i + 10_000]])
        scored = sa.select(sa.func.count()).select_from(_batch.join(lifecycle_scores, s.customer_id == b.customer_id))
        found = int(conn.execute(scored).scalar_one())
        ready = int(conn.execute(scored.where(s.stage == need)).scalar_one())
        conn.execute(sa.insert(lifecycle_history).from_select(
            ["scoring_id", "customer_id", "from_stage", "to_stage", "score", "model_version", "reason", "actor", "at"],
            sa.select(sa.null(), s.customer_id, sa.literal(need), sa.literal(to), s.score, s.model_version,
                      sa.literal(ACCEPTED), sa.literal(actor), sa.literal(now, sa.DateTime))
            .select_from(_batch.join(lifecycle_scores, s.customer_id == b.customer_id)).where(s.stage == need)))
        conn.execute(sa.update(lifecycle_scores).where(s.stage == need, s.customer_id.in_(sa.select(b.customer_id)))
                     .values(stage=to, stage_entered_at=now))
        _batch.drop(conn)
    return BatchAccept(ready, len(unique) - found, found - ready, len(customer_ids) - len(unique))


@dataclass(frozen=True)
class SlaReport:
    """MQL acceptance against the model's SLA."""

    hours: float
    accepted: int
    within: int
    waiting: int
    breached: int  # waiting past the SLA now

    @property
    def late(self) -> int:
        """Accepted, but after the SLA."""
        return self.accepted - self.within


def sla_report(engine: Engine, model: LifecycleModel, since: dt.datetime,
               now: dt.datetime | None = None) -> SlaReport:
    """Acceptances since `since` within the SLA, and MQLs waiting (past the SLA: breached)."""
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    hours = float(model.sla.mql_accept_hours)
    h, s = lifecycle_history.c, lifecycle_scores.c
    entry = lifecycle_history.alias("entry")
    entered_at = (sa.select(sa.func.max(entry.c.at)).where(
        entry.c.customer_id == h.customer_id, entry.c.to_stage == "mql",
        entry.c.history_id < h.history_id).scalar_subquery())
    acc = sa.select(h.history_id, h.at, entered_at.label("entered")).where(
        h.reason == ACCEPTED, h.from_stage == "mql", h.at >= since).subquery("acc")
    waited = age_days(acc.c.entered, acc.c.at) * 24.0
    cutoff = now - dt.timedelta(hours=hours)
    with engine.connect() as conn:
        accepted, within = conn.execute(sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((waited <= hours, 1), else_=0)), 0))).one()
        waiting, breached = conn.execute(sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((s.stage_entered_at < cutoff, 1), else_=0)), 0))
            .where(s.stage == "mql")).one()
    return SlaReport(hours, int(accepted), int(within), int(waiting), int(breached))
