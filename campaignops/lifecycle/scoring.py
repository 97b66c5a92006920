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

from campaignops.errors import ScoringInProgress
from campaignops.lifecycle.model import RESERVED_REASONS, STAGES, LifecycleModel, window_start
from campaignops.rules import compile_rule
from campaignops.schema import (
    customers,
    engagement_events,
    lifecycle_history,
    lifecycle_scores,
    lifecycle_watermarks,
)
from campaignops.sql import age_days, half_life

_scratch = sa.MetaData()
_next = sa.Table(
    "co_lifecycle_next", _scratch,
    sa.Column("customer_id", sa.BigInteger, primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("fit", sa.Float, nullable=False),
    sa.Column("engagement", sa.Float, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("prev_stage", sa.String(16)),
    sa.Column("prev_entered_at", sa.DateTime),
    prefixes=["TEMPORARY"],
)
# Customers with an engagement event read for the first time, or leaving the window, since the watermark.
_dirty = sa.Table(
    "co_lifecycle_dirty", _scratch,
    sa.Column("customer_id", sa.BigInteger, primary_key=True),
    prefixes=["TEMPORARY"],
)
# The scoring's own row in co_lifecycle_watermarks ('@' is never in a brief's campaign_id).
SCORING_KEY = "@lifecycle-scoring"
# A claim older than this is taken to be a crashed scoring's and may be taken over.
CLAIM_STALE = dt.timedelta(hours=6)


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
    rescored: int = 0  # rows of co_lifecycle_scores written (all of them on a full scoring)
    incremental: bool = False


@dataclass(frozen=True)
class Watermark:
    """Where the last scoring left off: the inputs read through `as_of` (None: never scored)."""

    as_of: dt.datetime | None


def has_engagement_events(engine: Engine | Connection) -> bool:
    """Whether the warehouse has the optional engagement_events table."""
    return sa.inspect(engine).has_table(engagement_events.name)


def _f(value: float) -> ColumnElement[float]:
    return sa.literal(float(value), sa.Float)


def _decayed(value: ColumnElement[float], since: ColumnElement[dt.datetime], model: LifecycleModel,
             as_of: dt.datetime) -> ColumnElement[float]:
    """An engagement sum as of `since`, carried forward to `as_of` by the half-life alone."""
    return value * half_life(age_days(since, sa.literal(as_of, sa.DateTime)),
                             _f(float(model.engagement.half_life_days)))


def _engagement(model: LifecycleModel, as_of: dt.datetime, use_events: bool, only_dirty: bool
                ) -> tuple[sa.Subquery | None, ColumnElement[float]]:
    """The raw engagement: a per-customer subquery over the events (all, or the dirty ones), or the columns'."""
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
        source: sa.FromClause = engagement_events
        if only_dirty:
            source = engagement_events.join(_dirty, _dirty.c.customer_id == ev.customer_id)
        sub = (sa.select(ev.customer_id.label("customer_id"),
                         sa.func.sum(points * half_life(age_days(ev.occurred_at, moment), life)).label("e"))
               .select_from(source).where(*where).group_by(ev.customer_id).subquery("eng"))
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


def scores_select(model: LifecycleModel, as_of: dt.datetime, use_events: bool, incremental: bool = False
                  ) -> sa.Select[tuple[int, ...]]:
    """customer_id, score, fit, engagement, stage, reason, prev_stage, prev_entered_at: every customer.

    Incremental: the events are aggregated only for the dirty customers; everyone else's engagement
    is their stored one decayed to `as_of`, and only rows that change (new, dirty, fit or engagement
    columns moved, or a stage change) are selected.
    """
    eng_sub, eng_expr = _engagement(model, as_of, use_events, only_dirty=incremental)
    prev = lifecycle_scores.alias("prev")
    carried = _decayed(prev.c.engagement, prev.c.scored_at, model, as_of)
    if incremental and use_events:
        assert eng_sub is not None
        is_dirty = _dirty.c.customer_id.is_not(None)
        raw: ColumnElement[float] = sa.case((sa.or_(prev.c.customer_id.is_(None), is_dirty), eng_expr), else_=carried)
        moved: ColumnElement[bool] = is_dirty
    else:
        raw = eng_expr
        moved = sa.func.abs(eng_expr - carried) > _f(1e-9) * (_f(1) + sa.func.abs(eng_expr))
    capped: ColumnElement[float] = raw
    if model.engagement.max_points is not None:
        cap = _f(float(model.engagement.max_points))
        capped = sa.case((raw > cap, cap), else_=raw)
    fit: ColumnElement[float] = _f(0)
    for points, rule in model.fit_rules:
        fit = fit + sa.case((compile_rule(rule, as_of), _f(points)), else_=_f(0))
    rule_rank: ColumnElement[int] = sa.case(
        *((compile_rule(rule, as_of), sa.literal(rank)) for rank, rule in model.rule_stages),
        else_=sa.literal(0)) if model.rule_stages else sa.literal(0)
    source = customers.outerjoin(prev, prev.c.customer_id == customers.c.customer_id)
    if incremental and use_events:
        source = source.outerjoin(_dirty, _dirty.c.customer_id == customers.c.customer_id)
    if eng_sub is not None:
        source = source.outerjoin(eng_sub, eng_sub.c.customer_id == customers.c.customer_id)
    changed = sa.or_(prev.c.customer_id.is_(None), prev.c.fit.is_(None), prev.c.fit != fit,
                     sa.func.coalesce(moved, sa.true()))
    base = (sa.select(customers.c.customer_id, (fit + capped).label("score"), fit.label("fit"),
                      raw.label("engagement"), rule_rank.label("rule_rank"),
                      sa.case((changed, sa.literal(1)), else_=sa.literal(0)).label("changed"),
                      prev.c.stage.label("prev_stage"), prev.c.stage_entered_at.label("prev_entered_at"))
            .select_from(source).offset(0).subquery("base"))  # OFFSET 0: computed once, not inlined per use
    score_rank: ColumnElement[int] = sa.case(
        *((base.c.score >= _f(m), sa.literal(r)) for r, m in model.score_stages), else_=sa.literal(0))
    ranked = sa.select(
        base.c.customer_id, base.c.score, base.c.fit, base.c.engagement, base.c.changed,
        base.c.prev_stage, base.c.prev_entered_at,
        sa.case((base.c.rule_rank > score_rank, base.c.rule_rank), else_=score_rank).label("cand"),
        _rank_of(base.c.prev_stage).label("prev_rank"),
    ).offset(0).subquery("ranked")
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
    q = sa.select(c.customer_id, c.score, c.fit, c.engagement, stage.label("stage"), reason.label("reason"),
                  c.prev_stage, c.prev_entered_at)
    return q.where(sa.or_(c.changed == 1, reason.is_not(None))) if incremental else q


def read_watermark(conn: Connection) -> Watermark:
    """The scoring's watermark (as_of None before the first scoring)."""
    w = lifecycle_watermarks.c
    as_of = conn.execute(sa.select(w.as_of).where(w.campaign_id == SCORING_KEY)).scalar_one_or_none()
    return Watermark(as_of)


def claim_scoring(engine: Engine, scoring_id: str, now: dt.datetime) -> Watermark:
    """Claim the scoring watermark for this run, or ScoringInProgress if another scoring holds it."""
    w = lifecycle_watermarks.c
    try:
        with engine.begin() as conn:
            if conn.execute(sa.select(w.campaign_id).where(w.campaign_id == SCORING_KEY)).first() is None:
                conn.execute(sa.insert(lifecycle_watermarks).values(
                    campaign_id=SCORING_KEY, stage="*", last_history_id=0, updated_at=now, as_of=None,
                    claimed_by=scoring_id, claimed_at=now))
                return Watermark(None)
            took = conn.execute(sa.update(lifecycle_watermarks).where(
                w.campaign_id == SCORING_KEY,
                sa.or_(w.claimed_by.is_(None), w.claimed_at < now - CLAIM_STALE),
            ).values(claimed_by=scoring_id, claimed_at=now)).rowcount
            if took != 1:
                raise ScoringInProgress("another lifecycle scoring is running; this one did nothing "
                                        "(run it again when that one has finished)")
            return read_watermark(conn)
    except sa.exc.IntegrityError as e:  # two first scorings inserting the row at once
        raise ScoringInProgress("another lifecycle scoring is running; this one did nothing "
                                "(run it again when that one has finished)") from e


def release_scoring(engine: Engine, scoring_id: str) -> None:
    """Give the claim back (after a failed scoring; a finished one releases it as it commits)."""
    w = lifecycle_watermarks.c
    with engine.begin() as conn:
        conn.execute(sa.update(lifecycle_watermarks).where(
            w.campaign_id == SCORING_KEY, w.claimed_by == scoring_id).values(claimed_by=None, claimed_at=None))


def _fill_dirty(conn: Connection, model: LifecycleModel, prev_as_of: dt.datetime, as_of: dt.datetime) -> None:
    """The customers with an event after the watermark or one leaving the window since it, and the unscored."""
    ev = engagement_events.c
    read_now = sa.and_(ev.occurred_at > prev_as_of, ev.occurred_at <= as_of)
    old, new = window_start(model.engagement, prev_as_of), window_start(model.engagement, as_of)
    cond = read_now if old is None or new is None else sa.or_(
        read_now, sa.and_(ev.occurred_at >= old, ev.occurred_at < new))
    _dirty.drop(conn, checkfirst=True)
    _dirty.create(conn)
    unscored = sa.select(customers.c.customer_id).where(
        ~sa.exists().where(lifecycle_scores.c.customer_id == customers.c.customer_id))
    conn.execute(sa.insert(_dirty).from_select(["customer_id"], sa.union(
        sa.select(ev.customer_id).where(cond, ev.event_type.in_(list(model.engagement.events))), unscored)))


def _can_be_incremental(conn: Connection, model: LifecycleModel, mark: Watermark, as_of: dt.datetime) -> bool:
    """Whether the last scoring is a base to build on: same model version, parts stored, earlier."""
    if mark.as_of is None or as_of <= mark.as_of:
        return False
    s = lifecycle_scores.c
    other = conn.execute(sa.select(s.customer_id).where(
        sa.or_(s.model_version != model.version, s.fit.is_(None), s.engagement.is_(None))).limit(1)).first()
    return other is None


def score_customers(engine: Engine, model: LifecycleModel, as_of: dt.datetime | None = None,
                    scoring_id: str | None = None, full: bool = False) -> ScoringResult:
    """Score the warehouse from the watermark on (everyone when `full` or the model changed); history for changes.

    A second scoring while one runs is refused (ScoringInProgress) before it reads anything.
    """
    as_of = (as_of or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    scoring_id = scoring_id or f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    mark = claim_scoring(engine, scoring_id, dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0))
    try:
        return _score(engine, model, as_of, scoring_id, mark, full)
    except BaseException:
        release_scoring(engine, scoring_id)
        raise


def _score(engine: Engine, model: LifecycleModel, as_of: dt.datetime, scoring_id: str, mark: Watermark,
           full: bool) -> ScoringResult:
    with engine.begin() as conn:
        use_events = has_engagement_events(conn)
        incremental = not full and _can_be_incremental(conn, model, mark, as_of)
        if incremental and use_events:
            assert mark.as_of is not None
            _fill_dirty(conn, model, mark.as_of, as_of)
        _next.drop(conn, checkfirst=True)
        _next.create(conn)
        conn.execute(sa.insert(_next).from_select(
            ["customer_id", "score", "fit", "engagement", "stage", "reason", "prev_stage", "prev_entered_at"],
            scores_select(model, as_of, use_events, incremental)))
        n = _next.c
        changed = sa.select(
            sa.literal(scoring_id), n.customer_id, n.prev_stage, n.stage, n.score,
            sa.literal(model.version), n.reason, sa.literal(as_of, sa.DateTime),
        ).where(n.reason.is_not(None))
        conn.execute(sa.insert(lifecycle_history).from_select(
            ["scoring_id", "customer_id", "from_stage", "to_stage", "score", "model_version", "reason", "at"],
            changed))
        s = lifecycle_scores.c
        if incremental:
            conn.execute(sa.delete(lifecycle_scores).where(s.customer_id.in_(sa.select(n.customer_id))))
            conn.execute(sa.delete(lifecycle_scores).where(
                ~sa.exists().where(customers.c.customer_id == s.customer_id)))
        else:
            conn.execute(sa.delete(lifecycle_scores))
        since = sa.case((n.reason.is_(None), n.prev_entered_at), else_=sa.literal(as_of, sa.DateTime))
        conn.execute(sa.insert(lifecycle_scores).from_select(
            ["customer_id", "score", "fit", "engagement", "stage", "model_version", "scored_at",
             "stage_entered_at"],
            sa.select(n.customer_id, n.score, n.fit, n.engagement, n.stage, sa.literal(model.version),
                      sa.literal(as_of, sa.DateTime), since)))
        rescored = int(conn.execute(sa.select(sa.func.count()).select_from(_next)).scalar_one())
        scored = int(conn.execute(sa.select(sa.func.count()).select_from(lifecycle_scores)).scalar_one())
        _next.drop(conn)
        if incremental and use_events:
            _dirty.drop(conn)
        entered, backward = transitions(conn, scoring_id)
        _advance(conn, scoring_id, as_of)
    return ScoringResult(scoring_id, model.version, as_of, scored, entered, backward, use_events, rescored,
                         incremental)


def _advance(conn: Connection, scoring_id: str, as_of: dt.datetime) -> None:
    """Move the watermark to `as_of` in the scoring's transaction, if this scoring still holds the claim."""
    w, h = lifecycle_watermarks.c, lifecycle_history.c
    top = conn.execute(sa.select(sa.func.coalesce(sa.func.max(h.history_id), 0))).scalar_one()
    moved = conn.execute(sa.update(lifecycle_watermarks).where(
        w.campaign_id == SCORING_KEY, w.claimed_by == scoring_id).values(
        as_of=as_of, last_history_id=int(top), updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        claimed_by=None, claimed_at=None)).rowcount
    if moved != 1:  # a stale claim taken over by another scoring: this one's writes roll back
        raise ScoringInProgress("another lifecycle scoring took over this one's claim; nothing was written")


def transitions(conn: Connection, scoring_id: str) -> tuple[dict[str, int], int]:
    """How many entered each stage in one scoring run (funnel order), and how many moved backwards."""
    h = lifecycle_history.c
    counts = {str(stage): int(k) for stage, k in conn.execute(
        sa.select(h.to_stage, sa.func.count()).where(h.scoring_id == scoring_id).group_by(h.to_stage))}
    backward = int(conn.execute(sa.select(sa.func.count()).where(
        h.scoring_id == scoring_id, h.reason.not_in(RESERVED_REASONS))).scalar_one())
    return {s: counts[s] for s in STAGES if s in counts}, backward
