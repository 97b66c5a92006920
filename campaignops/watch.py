"""The watch of recurring campaigns: who entered, who left, and why, run after run (docs/watch.md).

At segmentation each run's send audience is counted by dimension (country, lifecycle stage,
loyalty tier, cell, language), with its outcomes and its exclusions by cause, into
``co_run_composition`` (one scan of the run's rows); and the run's rows and those of the
campaign's previous sent run are grouped together, in SQL, by customer_id (one scan of both,
no join) to count who entered and who left by cause (the waterfall step that now excludes
them or no longer does, the rules, new or removed customers) and country, into
``co_run_churn``. Counts only, never people. The comparison then reads those small tables:
each cause's churn against the brief's ``watch`` thresholds, and each dimension's
population stability index (PSI) against the pooled composition of the recent sent runs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops import runs
from campaignops.brief import Brief
from campaignops.schema import audience, customers, run_churn, run_composition
from campaignops.schema import runs as runs_table
from campaignops.sql import sqlite_cache

DIMENSIONS = ("country", "lifecycle_stage", "loyalty_tier", "cell", "language")
NONE = "(none)"
PSI_CHECK = "composition_within_psi_of_recent_runs"
CHURN_CHECK = "churn_by_cause_within_tolerance"
# A share of 0 has no logarithm: PSI takes it as this (the usual floor).
PSI_FLOOR = 1e-4

CAUSE_LABELS = {
    "rule": "the brief's rules",
    "new_customer": "new customers",
    "removed_customer": "customers removed from the warehouse",
    "no_consent": "no email consent",
    "invalid_address": "missing or invalid address",
    "frequency_cap": "over the frequency cap",
    "duplicate_address": "duplicate address",
}


def cause_label(cause: str) -> str:
    """A cause code as a person reads it (suppressed_unsubscribe -> suppression: unsubscribe)."""
    if cause.startswith("suppressed_"):
        return "suppression: " + cause.removeprefix("suppressed_").replace("_", " ")
    if cause.startswith("missing_"):
        return "missing " + cause.removeprefix("missing_")
    return CAUSE_LABELS.get(cause, cause)


def sent_runs_before(conn: Connection, campaign_id: str, run_id: str, as_of: dt.datetime,
                     limit: int) -> list[str]:
    """The campaign's sent runs up to as_of (not run_id), newest first."""
    r = runs_table.c
    return [str(x) for x in conn.execute(
        sa.select(r.run_id)
        .where(r.campaign_id == campaign_id, r.run_id != run_id, r.status == runs.SENT, r.as_of <= as_of)
        .order_by(r.as_of.desc(), r.created_at.desc())
        .limit(limit)
    ).scalars()]


def _none() -> Any:
    """'(none)' inline in the SQL text, so a GROUP BY repeats the very expression it selects."""
    return sa.literal_column(f"'{NONE}'", sa.String)


def _value(col: Any) -> Any:
    return sa.func.coalesce(sa.cast(col, sa.String), _none())


def composition_insert(run_id: str) -> Any:
    """One INSERT ... SELECT counting the run's rows per dimension: a single scan of its rows.

    The run's rows are grouped once by every column the dimensions read (outcome, seed,
    reason and the five dimensions, the lifecycle stage as segmentation wrote it: a few
    thousand groups at most, no lookup into customers); each dimension then sums that small
    grouping (a CTE both databases materialise, as it is read seven times).
    """
    a = audience.c
    keys = [a.outcome, a.is_seed, a.reason, *(a[d] for d in DIMENSIONS)]
    groups = (sa.select(*keys, sa.func.count().label("n"))
              .where(a.run_id == run_id)
              .group_by(*keys)
              .cte("run_groups"))
    g = groups.c
    g_send = sa.and_(g.outcome == "send", sa.not_(g.is_seed))

    def summed(dimension: str, col: Any, where: Any = None) -> Any:
        v = _value(col)
        q = sa.select(sa.literal(run_id), sa.literal(dimension), v, sa.func.sum(g.n)).group_by(v)
        return q if where is None else q.where(where)

    parts = [summed("outcome", g.outcome),
             summed("excluded", g.reason, sa.and_(g.outcome == "excluded", sa.not_(g.is_seed))),
             *(summed(d, g[d], g_send) for d in DIMENSIONS)]
    return sa.insert(run_composition).from_select(["run_id", "dimension", "value", "count"],
                                                  sa.union_all(*parts))


def churn_insert(run_id: str, base_run_id: str, base_as_of: dt.datetime) -> Any:
    """One INSERT ... SELECT: who left since the base run and who entered, by cause and country.

    A single scan of both runs' rows grouped by customer_id (no join of the two runs, so it
    needs no index on customer_id and no planner statistics); only the customers who moved
    are then looked up in ``customers``.
    """
    a, k = audience.c, customers.c
    in_audience = a.outcome.in_(("send", "control"))

    def of(run: str, expr: Any, else_: Any = None) -> Any:
        return sa.func.max(sa.case((a.run_id == run, expr), else_=else_))

    per_customer = (
        sa.select(a.customer_id.label("customer_id"),
                  of(run_id, sa.case((in_audience, 1), else_=0), 0).label("now_in"),
                  of(base_run_id, sa.case((in_audience, 1), else_=0), 0).label("was_in"),
                  of(run_id, 1, 0).label("now_row"),
                  of(base_run_id, 1, 0).label("was_row"),
                  of(run_id, a.reason).label("now_reason"),
                  of(base_run_id, a.reason).label("was_reason"),
                  of(run_id, a.country).label("now_country"),
                  of(base_run_id, a.country).label("was_country"))
        .where(a.run_id.in_((run_id, base_run_id)), sa.not_(a.is_seed))
        .group_by(a.customer_id)
        .subquery("per_customer")
    )
    p = per_customer.c
    left = p.was_in == 1
    cause = sa.case(
        # left: now excluded (its reason), no longer matched by the rules, or gone from customers
        (sa.and_(left, p.now_row == 1), p.now_reason),
        (sa.and_(left, k.customer_id.is_(None)), "removed_customer"),
        (left, "rule"),
        # entered: no longer excluded (the reason it had), signed up since, or newly matched
        (p.was_row == 1, p.was_reason),
        (k.signup_date > base_as_of.date(), "new_customer"),
        else_="rule",
    )
    country = sa.case((left, sa.func.coalesce(p.now_country, k.country, p.was_country)),
                      else_=p.now_country)
    moved = (
        sa.select(sa.case((left, "left"), else_="entered").label("direction"), cause.label("cause"),
                  _value(country).label("country"))
        .select_from(per_customer.outerjoin(customers, k.customer_id == p.customer_id))
        .where(p.now_in != p.was_in)
        .subquery("moved")
    )
    m = moved.c
    q = (sa.select(sa.literal(run_id), m.direction, m.cause, m.country, sa.literal(base_run_id),
                   sa.func.count())
         .group_by(m.direction, m.cause, m.country))
    return sa.insert(run_churn).from_select(
        ["run_id", "direction", "cause", "country", "base_run_id", "count"], q)


# SQLite page cache (and so sorter memory) while the two GROUP BYs run, in KiB, as the
# segmentation uses; at 1M customers it made no measurable difference (docs/bench-watch.md).
SQLITE_CACHE_KIB = 32 * 1024


@contextmanager
def record_settings(conn: Connection) -> Iterator[None]:
    """Session settings for the two grouping scans (PostgreSQL: no JIT; SQLite: a larger cache), restored."""
    if conn.dialect.name == "postgresql":
        # JIT compiles for about a second on these plans and then buys nothing measurable.
        conn.exec_driver_sql("SET LOCAL jit = off")  # ends with the transaction
    with sqlite_cache(conn, SQLITE_CACHE_KIB) if conn.dialect.name == "sqlite" else nullcontext():
        yield


def record(engine: Engine, run_id: str) -> str | None:
    """Count the run's composition and its churn since the previous sent run (in SQL); that run's id."""
    run = runs.get_run(engine, run_id)
    with engine.begin() as conn, record_settings(conn):
        conn.execute(sa.delete(run_composition).where(run_composition.c.run_id == run_id))
        conn.execute(sa.delete(run_churn).where(run_churn.c.run_id == run_id))
        conn.execute(composition_insert(run_id))
        base = sent_runs_before(conn, run.campaign_id, run_id, run.as_of, 1)
        if not base:
            return None
        base_as_of = conn.execute(
            sa.select(runs_table.c.as_of).where(runs_table.c.run_id == base[0])).scalar_one()
        conn.execute(churn_insert(run_id, base[0], base_as_of))
    return base[0]


@dataclass(frozen=True)
class Churn:
    """One cause's movement since the previous sent run (counts only)."""

    direction: str  # entered | left
    cause: str
    count: int
    percent: float  # of the previous run's audience
    countries: tuple[tuple[str, int], ...]  # the largest first
    flagged: bool

    def line(self) -> str:
        """e.g. 'left: no email consent +1,200 (6.0 %; DE 1,200)'."""
        top = ", ".join(f"{c} {n:,}" for c, n in self.countries[:3])
        way = "now excluded by" if self.direction == "left" and self.cause not in (
            "rule", "removed_customer") else ("no longer excluded by" if self.direction == "entered"
                                              and self.cause not in ("rule", "new_customer") else "by")
        return (f"{self.direction} {way} {cause_label(self.cause)}: {self.count:,} "
                f"({self.percent:.1f} % of the previous audience; {top})")


@dataclass(frozen=True)
class Shift:
    """One dimension's composition against the recent runs."""

    dimension: str
    psi: float
    moved: tuple[tuple[str, float, float], ...]  # (value, share now %, recent share %), largest move first
    flagged: bool

    def line(self) -> str:
        """e.g. 'lifecycle_stage PSI 0.42: opportunity 7.5 % (recent 0.0 %)'."""
        moves = ", ".join(f"{v} {now:.1f} % (recent {was:.1f} %)" for v, now, was in self.moved[:3])
        return f"{self.dimension} PSI {self.psi:.3f}: {moves}"


@dataclass(frozen=True)
class Comparison:
    """A run against its previous sent run and the recent sent runs of its campaign."""

    run_id: str
    campaign_id: str
    base_run_id: str | None
    recent_run_ids: tuple[str, ...]
    audience: int  # send + control now
    base_audience: int
    sends: int
    exclusions: dict[str, int]
    churn: tuple[Churn, ...]
    shifts: tuple[Shift, ...]
    psi_warning: float
    churn_warning_percent: float
    churn_min_count: int
    critical: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def churn_flags(self) -> list[Churn]:
        """Causes that moved beyond the brief's tolerance."""
        return [c for c in self.churn if c.flagged]

    @property
    def psi_flags(self) -> list[Shift]:
        """Dimensions whose PSI reached the brief's threshold."""
        return [s for s in self.shifts if s.flagged]

    @property
    def flagged(self) -> bool:
        """True when anything moved."""
        return bool(self.churn_flags or self.psi_flags)

    def lines(self) -> list[str]:
        """The comparison as a busy approver reads it: what moved first, then the rest."""
        if self.base_run_id is None:
            return [f"first sent run of {self.campaign_id}: nothing to compare with yet"]
        out = [f"against the previous sent run `{self.base_run_id}`: audience {self.base_audience:,} -> "
               f"{self.audience:,}; composition against {len(self.recent_run_ids)} recent sent run(s)"]
        flags = [c.line() for c in self.churn_flags] + [s.line() for s in self.psi_flags]
        out += [f"MOVED: {f}" for f in flags] or ["nothing moved beyond the brief's watch thresholds"]
        out += [c.line() for c in self.churn if not c.flagged][:5]
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (counts and shares only)."""
        return asdict(self)


def _composition(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """{run_id: {dimension: {value: count}}} from co_run_composition."""
    out: dict[str, dict[str, dict[str, int]]] = {r: {} for r in run_ids}
    if not run_ids:
        return out
    t = run_composition.c
    for run_id, dim, value, n in conn.execute(
            sa.select(t.run_id, t.dimension, t.value, t.count).where(t.run_id.in_(list(run_ids)))):
        out[run_id].setdefault(dim, {})[value] = int(n)
    return out


def psi(actual: dict[str, int], expected: dict[str, int]) -> float:
    """Population stability index of two distributions of counts (0 when both are empty)."""
    na, ne = sum(actual.values()), sum(expected.values())
    if na == 0 or ne == 0:
        return 0.0
    total = 0.0
    for v in set(actual) | set(expected):
        a = max(actual.get(v, 0) / na, PSI_FLOOR)
        e = max(expected.get(v, 0) / ne, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def _shift(dimension: str, now: dict[str, int], recent: dict[str, int], threshold: float) -> Shift:
    na, ne = sum(now.values()) or 1, sum(recent.values()) or 1
    moved = sorted(((v, 100 * now.get(v, 0) / na, 100 * recent.get(v, 0) / ne)
                    for v in set(now) | set(recent)), key=lambda m: -abs(m[1] - m[2]))
    value = psi(now, recent)
    return Shift(dimension, round(value, 4), tuple((v, round(a, 2), round(b, 2)) for v, a, b in moved),
                 value >= threshold)


def compare(engine: Engine, run_id: str, brief: Brief | None = None) -> Comparison:
    """The run against its previous sent run (churn by cause) and its recent sent runs (PSI)."""
    run = runs.get_run(engine, run_id)
    w = (brief or run.brief).watch
    t = run_churn.c
    with engine.connect() as conn:
        recent = sent_runs_before(conn, run.campaign_id, run_id, run.as_of, w.recent_runs)
        comp = _composition(conn, [run_id, *recent])
        churn_rows = conn.execute(
            sa.select(t.direction, t.cause, t.country, t.base_run_id, t.count).where(t.run_id == run_id)
        ).all()
    base = churn_rows[0].base_run_id if churn_rows else (recent[0] if recent else None)
    outcomes = comp[run_id].get("outcome", {})
    size = outcomes.get("send", 0) + outcomes.get("control", 0)
    base_out = comp.get(base, {}).get("outcome", {}) if base else {}
    base_size = base_out.get("send", 0) + base_out.get("control", 0)
    by_cause: dict[tuple[str, str], dict[str, int]] = {}
    for direction, cause, country, _, n in churn_rows:
        by_cause.setdefault((direction, cause), {})[country] = int(n)
    churn = []
    for (direction, cause), countries in by_cause.items():
        n = sum(countries.values())
        pct = 100 * n / base_size if base_size else 100.0
        churn.append(Churn(direction, cause, n, round(pct, 2),
                           tuple(sorted(countries.items(), key=lambda kv: -kv[1])),
                           n >= w.churn_min_count and pct >= w.churn_warning_percent))
    churn.sort(key=lambda c: -c.count)
    shifts = []
    if recent:
        for d in DIMENSIONS:
            pooled: dict[str, int] = {}
            for r in recent:
                for v, n in comp[r].get(d, {}).items():
                    pooled[v] = pooled.get(v, 0) + n
            shifts.append(_shift(d, comp[run_id].get(d, {}), pooled, w.psi_warning))
    return Comparison(
        run_id=run_id, campaign_id=run.campaign_id, base_run_id=base, recent_run_ids=tuple(recent),
        audience=size, base_audience=base_size, sends=outcomes.get("send", 0),
        exclusions=dict(comp[run_id].get("excluded", {})), churn=tuple(churn), shifts=tuple(shifts),
        psi_warning=w.psi_warning, churn_warning_percent=w.churn_warning_percent,
        churn_min_count=w.churn_min_count, critical=w.critical,
    )


@dataclass(frozen=True)
class RunPoint:
    """One run of a campaign as the watch lists it (counts only)."""

    run_id: str
    as_of: dt.datetime
    status: str
    sends: int
    exclusions: dict[str, int]
    comparison: Comparison

    @property
    def moved(self) -> list[str]:
        """What moved, shortest first: 'left no_consent 200 (DE)', 'PSI country 0.52'."""
        c = self.comparison
        out = [f"{x.direction} {x.cause} {x.count:,} ({', '.join(k for k, _ in x.countries[:2])})"
               for x in c.churn_flags]
        return out + [f"PSI {s.dimension} {s.psi:.2f}" for s in c.psi_flags]


def recurring_campaigns(engine: Engine) -> list[str]:
    """Campaigns with at least two sent runs, by name."""
    r = runs_table.c
    with engine.connect() as conn:
        return [str(x) for x in conn.execute(
            sa.select(r.campaign_id).where(r.status == runs.SENT, r.dry_run == sa.false())
            .group_by(r.campaign_id).having(sa.func.count() >= 2).order_by(r.campaign_id)).scalars()]


def campaign_history(engine: Engine, campaign_id: str, last: int = 8) -> list[RunPoint]:
    """The campaign's last runs that were segmented (not dry runs), oldest first, each compared."""
    r = runs_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.run_id, r.as_of, r.status)
            .where(r.campaign_id == campaign_id, r.dry_run == sa.false(),
                   sa.exists().where(run_composition.c.run_id == r.run_id))
            .order_by(r.as_of.desc(), r.created_at.desc()).limit(last)).all()
    points = []
    for run_id, as_of, status in reversed(rows):
        c = compare(engine, run_id)
        points.append(RunPoint(run_id, as_of, status, c.sends, c.exclusions, c))
    return points


def history_rows(points: Sequence[RunPoint]) -> list[dict[str, str]]:
    """One row per run: the table the CLI and the artifact show (counts only)."""
    reasons = sorted({k for p in points for k in p.exclusions})
    rows = []
    for p in points:
        row = {"run": p.run_id[:12], "as of": f"{p.as_of:%Y-%m-%d}", "status": p.status,
               "sends": f"{p.sends:,}"}
        row |= {k: f"{p.exclusions.get(k, 0):,}" for k in reasons}
        worst = max(p.comparison.shifts, key=lambda s: s.psi, default=None)
        row["max PSI"] = f"{worst.psi:.2f} {worst.dimension}" if worst else "-"
        row["moved"] = "; ".join(p.moved) or "-"
        rows.append(row)
    return rows


CHART_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def chart_svg(campaign_id: str, points: Sequence[RunPoint], width: int = 640, height: int = 260) -> str:
    """Sends and each exclusion reason over the runs, one line each; flagged runs marked (SVG)."""
    pad, top_pad = 44, 24
    series: list[tuple[str, list[int]]] = [("sends", [p.sends for p in points])]
    series += [(k, [p.exclusions.get(k, 0) for p in points])
               for k in sorted({k for p in points for k in p.exclusions})]
    top = max((v for _, vals in series for v in vals), default=0) or 1
    n = max(len(points) - 1, 1)

    def x(i: int) -> float:
        return pad + (width - pad - 150) * i / n

    def y(v: int) -> float:
        return height - pad - (height - pad - top_pad) * v / top

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{pad}" y="14">{campaign_id}: sends and exclusions by reason over its runs</text>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - 150}" y2="{height - pad}" stroke="#444"/>',
           f'<line x1="{pad}" y1="{top_pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
           f'<text x="2" y="{top_pad + 4}">{top:,}</text><text x="30" y="{height - pad + 4}">0</text>']
    for i, p in enumerate(points):
        out.append(f'<text x="{x(i) - 14:.1f}" y="{height - pad + 14}">{p.as_of:%m-%d}</text>')
        if p.comparison.flagged:
            out.append(f'<line x1="{x(i):.1f}" y1="{top_pad}" x2="{x(i):.1f}" y2="{height - pad}" '
                       f'stroke="#d62728" stroke-dasharray="3 3"/><text x="{x(i) - 12:.1f}" '
                       f'y="{height - pad + 28}" fill="#d62728">moved</text>')
    for k, (name, vals) in enumerate(series):
        colour = CHART_COLOURS[k % len(CHART_COLOURS)]
        xy = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vals))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{xy}"/>')
        out.append(f'<text x="{width - 142}" y="{top_pad + 13 * k}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)
