"""Scoring inside the warehouse: every customer's score and stage, and the stage changes.

One transaction: the new scores go into a temporary table by one ``INSERT ... SELECT``
(fit rules, decayed engagement, the stage decision of ``model.next_stage`` as CASE
expressions), the changed stages are appended to ``co_lifecycle_history``, and
``co_lifecycle_scores`` is replaced. No customer row enters Python; the warehouse's own
tables are only read.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from campaignops.lifecycle.model import RESERVED_REASONS, STAGES, LifecycleModel, window_start
from campaignops.rules import compile_rule
from campaignops.schema import customers, engagement_events, lifecycle_history, lifecycle_scores
from campaignops.sql import age_days, half_life

_scratch = sa.MetaData()
_next = sa.Table(
    "co_lifecycle_next", _scratch,
    sa.Column("customer_id", sa.BigInteger, primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("prev_stage", sa.String(16)),
    sa.Column("prev_entered_at", sa.DateTime),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class ScoringResult:
    """What one scoring run did: how many were scored, and how many entered each stage."""

    scoring_id: str
    model_version: str
    as_of: dt.datetime
    scored: int
    entered: dict[str, int] = field(default_factory=dict)
    backward: int = 0
    used_events: bool = False


def has_engagement_events(engine: Engine | Connection) -> bool:
    """Whether the warehouse has the optional engagement_events table."""
    return sa.inspect(engine).has_table(engagement_events.name)


def _f(value: float) -> ColumnElement[float]:
    return sa.literal(float(value), sa.Float)


def _engagement(model: LifecycleModel, as_of: dt.datetime, use_events: bool
                ) -> tuple[sa.Subquery | None, ColumnElement[float]]:
    """The engagement points: a per-customer subquery over the events, or the columns' expression."""
    eng = model.engagement
    life = _f(float(eng.half_life_days))
    start = window_start(eng, as_of)
    moment = sa.literal(as_of, sa.DateTime)
    if use_events:
        ev = engagement_events.c
        points = sa.case(*((ev.event_type == k, _f(float(p))) for k, p in eng.events.items()), else_=_f(0))
        where = [ev.occurred_at <= as_of, ev.event_type.in_(list(eng.events))]
        if start is not None:
            where.append(ev.occurred_at >= start)
        sub = (sa.select(ev.customer_id.label("customer_id"),
                         sa.func.sum(points * half_life(age_days(ev.occurred_at, moment), life)).label("e"))
               .where(*where).group_by(ev.customer_id).subquery("eng"))
        return sub, sa.func.coalesce(sub.c.e, _f(0))
    total: ColumnElement[float] = _f(0)
    for name, p in model.engagement.columns.items():
        col = customers.c[name]
        cond = [col.is_not(None), col <= as_of] + ([col >= start] if start is not None else [])
        total = total + sa.case((sa.and_(*cond), _f(float(p)) * half_life(age_days(col, moment), life)),
                                else_=_f(0))
    return None, total


def _stage_name(rank: ColumnElement[int]) -> ColumnElement[str]:
    return sa.case(*((rank == i, sa.literal(s)) for i, s in enumerate(STAGES)))


def _rank_of(stage: ColumnElement[str]) -> ColumnElement[int]:
    return sa.case(*((stage == s, sa.literal(i)) for i, s in enumerate(STAGES)), else_=sa.literal(-1))


def scores_select(model: LifecycleModel, as_of: dt.datetime, use_events: bool) -> sa.Select[tuple[int, ...]]:
    """customer_id, score, stage, reason, prev_stage, prev_entered_at for every customer."""
    eng_sub, eng_expr = _engagement(model, as_of, use_events)
    if model.engagement.max_points is not None:
        cap = _f(float(model.engagement.max_points))
        eng_expr = sa.case((eng_expr > cap, cap), else_=eng_expr)
    fit: ColumnElement[float] = _f(0)
    for points, rule in model.fit_rules:
        fit = fit + sa.case((compile_rule(rule, as_of), _f(points)), else_=_f(0))
    rule_rank: ColumnElement[int] = sa.case(
        *((compile_rule(rule, as_of), sa.literal(rank)) for rank, rule in model.rule_stages),
        else_=sa.literal(0)) if model.rule_stages else sa.literal(0)
    prev = lifecycle_scores.alias("prev")
    source = customers.outerjoin(prev, prev.c.customer_id == customers.c.customer_id)
    if eng_sub is not None:
        source = source.outerjoin(eng_sub, eng_sub.c.customer_id == customers.c.customer_id)
    base = (sa.select(customers.c.customer_id, (fit + eng_expr).label("score"), rule_rank.label("rule_rank"),
                      prev.c.stage.label("prev_stage"), prev.c.stage_entered_at.label("prev_entered_at"))
            .select_from(source).subquery("base"))
    score_rank: ColumnElement[int] = sa.case(
        *((base.c.score >= _f(m), sa.literal(r)) for r, m in model.score_stages), else_=sa.literal(0))
    ranked = sa.select(
        base.c.customer_id, base.c.score, base.c.prev_stage, base.c.prev_entered_at,
        sa.case((base.c.rule_rank > score_rank, base.c.rule_rank), else_=score_rank).label("cand"),
        _rank_of(base.c.prev_stage).label("prev_rank"),
    ).subquery("ranked")
    c = ranked.c
    forward = sa.or_(c.prev_stage.is_(None), c.cand > c.prev_rank)
    recycles = [(sa.and_(c.prev_stage.in_(r.from_), c.score < _f(float(r.below_score))), r)
                for r in model.recycle]
    score_ranks = [r for r, _ in model.score_stages] + [0]
    stage = sa.case((forward, _stage_name(c.cand)), *((cond, sa.literal(r.to)) for cond, r in recycles),
                    else_=c.prev_stage)
    reason = sa.case((c.prev_stage.is_(None), sa.literal("initial")),
                     (c.cand > c.prev_rank,
                      sa.case((c.cand.in_(score_ranks), sa.literal("score")), else_=sa.literal("rule"))),
                     *((cond, sa.literal(r.reason)) for cond, r in recycles),
                     else_=sa.null())
    return sa.select(c.customer_id, c.score, stage.label("stage"), reason.label("reason"),
                     c.prev_stage, c.prev_entered_at)


def score_customers(engine: Engine, model: LifecycleModel, as_of: dt.datetime | None = None,
                    scoring_id: str | None = None) -> ScoringResult:
    """Score every customer in the warehouse; history rows only for stage changes."""
    as_of = (as_of or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    scoring_id = scoring_id or f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        use_events = has_engagement_events(conn)
        _next.drop(conn, checkfirst=True)
        _next.create(conn)
        conn.execute(sa.insert(_next).from_select(
            ["customer_id", "score", "stage", "reason", "prev_stage", "prev_entered_at"],
            scores_select(model, as_of, use_events)))
        n = _next.c
        changed = sa.select(
            sa.literal(scoring_id), n.customer_id, n.prev_stage, n.stage, n.score,
            sa.literal(model.version), n.reason, sa.literal(as_of, sa.DateTime),
        ).where(n.reason.is_not(None))
        conn.execute(sa.insert(lifecycle_history).from_select(
            ["scoring_id", "customer_id", "from_stage", "to_stage", "score", "model_version", "reason", "at"],
            changed))
        conn.execute(sa.delete(lifecycle_scores))
        since = sa.case((n.reason.is_(None), n.prev_entered_at), else_=sa.literal(as_of, sa.DateTime))
        conn.execute(sa.insert(lifecycle_scores).from_select(
            ["customer_id", "score", "stage", "model_version", "scored_at", "stage_entered_at"],
            sa.select(n.customer_id, n.score, n.stage, sa.literal(model.version),
                      sa.literal(as_of, sa.DateTime), since)))
        scored = int(conn.execute(sa.select(sa.func.count()).select_from(_next)).scalar_one())
        _next.drop(conn)
        entered, backward = transitions(conn, scoring_id)
    return ScoringResult(scoring_id, model.version, as_of, scored, entered, backward, use_events)


def transitions(conn: Connection, scoring_id: str) -> tuple[dict[str, int], int]:
    """How many entered each stage in one scoring run (funnel order), and how many moved backwards."""
    h = lifecycle_history.c
    counts = {str(stage): int(k) for stage, k in conn.execute(
        sa.select(h.to_stage, sa.func.count()).where(h.scoring_id == scoring_id).group_by(h.to_stage))}
    backward = int(conn.execute(sa.select(sa.func.count()).where(
        h.scoring_id == scoring_id, h.reason.not_in(RESERVED_REASONS))).scalar_one())
    return {s: counts[s] for s in STAGES if s in counts}, backward
