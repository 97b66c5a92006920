"""Did it work? A sent run's KPI, treated against the holdout, per cell (docs/results.md).

The outcome per recipient is computed in the warehouse: one ``GROUP BY`` over the run's
``co_audience`` rows (outcome ``send`` or ``control``, seeds left out) joined to
``customers``, counting those whose metric column (campaignops.metrics) is later than
the send and not later than the end of the window. Only counts come back to Python.
Treated means assigned to a cell (intent to treat, whatever the ESP then did); the
holdout is every ``control`` row, shared by the cells. The statistics come from scipy:
Pearson's chi-square test of the 2x2 table (the two-proportion z-test) for the p-value,
the normal (Wald) interval for the difference of rates and scipy's relative-risk
interval for the relative lift.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import sqlalchemy as sa

from campaignops import runs
from campaignops.brief import Brief
from campaignops.errors import CampaignOpsError, ResultsUnavailable
from campaignops.metrics import Metric, resolve
from campaignops.schema import audience, contact_history, customers
from campaignops.schema import runs as runs_table
from campaignops.warehouse import Warehouse

ALPHA = 0.05  # two-sided: 95 % intervals
POWER = 0.8  # the minimum detectable effect is the lift found 80 % of the time
CHART_DAYS = 30  # the cumulative curve's longest reach, in days since the send
SEND_SPREAD = dt.timedelta(hours=1)  # cells sent further apart than this are not comparable
PRESSURE_GAP = 0.1  # other contacts per customer between the arms above this: not comparable
PLANNING_RATE = 0.5  # intake knows no baseline: the rate with the largest variance


@dataclass(frozen=True)
class Comparison:
    """One treated group against the holdout: counts, rates, lift, interval, test."""

    name: str
    treated: int
    treated_conversions: int
    control: int
    control_conversions: int
    treated_rate: float | None
    control_rate: float | None
    lift: float | None  # absolute: treated rate minus holdout rate
    lift_low: float | None
    lift_high: float | None
    relative_lift: float | None  # lift / holdout rate
    relative_low: float | None
    relative_high: float | None
    p_value: float | None
    incremental: float | None  # lift x treated: conversions the campaign added
    mde: float | None  # minimum detectable absolute lift at these sizes

    @property
    def significant(self) -> bool:
        """The interval excludes zero (p below ALPHA)."""
        return self.p_value is not None and self.p_value < ALPHA


@dataclass(frozen=True)
class RunResults:
    """A sent run's results (counts and rates only; no personal data)."""

    run_id: str
    campaign_id: str
    metric: str
    definition: str
    sent_at: dt.datetime
    measured_to: dt.datetime
    target: float
    target_kind: str  # "incremental conversions" | "absolute lift"
    total: Comparison
    cells: tuple[Comparison, ...]
    progress: float | None  # share of the target reached (1.0 = met)
    notes: tuple[str, ...]
    # cumulative converted share by day since send: name -> [(day, rate)]
    curve: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """No note says the comparison cannot be trusted."""
        return not self.notes


def _rate(x: int, n: int) -> float | None:
    return x / n if n else None


def minimum_detectable_effect(treated: int, control: int, rate: float,
                              alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest absolute lift a two-sided test at ``alpha`` finds with ``power`` at these sizes."""
    if treated <= 0 or control <= 0:
        return None
    p = min(max(rate, 0.0), 1.0)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(p * (1 - p) * (1 / treated + 1 / control))


def compare(name: str, nt: int, xt: int, nc: int, xc: int) -> Comparison:
    """Treated (nt, xt) against holdout (nc, xc): lift, 95 % intervals, p-value, MDE."""
    # scipy on use only: intake imports this module (power_warning), and scipy.stats costs
    # ~1.7 s of every command's start
    from scipy import stats
    from scipy.stats.contingency import relative_risk

    pt, pc = _rate(xt, nt), _rate(xc, nc)
    if pt is None or pc is None:
        return Comparison(name, nt, xt, nc, xc, pt, pc, *([None] * 9))
    lift = pt - pc
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    if 0 < xt + xc < nt + nc:
        table = [[xt, nt - xt], [xc, nc - xc]]
        p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    else:  # nobody or everybody converted: the arms cannot differ
        p_value = 1.0
    rel = rel_low = rel_high = None
    if xc > 0:
        rel = lift / pc
        if xt > 0:
            ci = relative_risk(xt, nt, xc, nc).confidence_interval(1 - ALPHA)
            rel_low, rel_high = float(ci.low) - 1, float(ci.high) - 1
    pooled = (xt + xc) / (nt + nc)
    return Comparison(name, nt, xt, nc, xc, pt, pc, lift, lift - z * se, lift + z * se, rel, rel_low,
                      rel_high, p_value, lift * nt, minimum_detectable_effect(nt, nc, pooled))


def target_lift(brief: Brief, treated: int) -> float | None:
    """The brief's target as an absolute lift at this treated size.

    A target above 1 counts incremental conversions (1,500 customers brought back: a lift
    of 1500 / treated); a target of at most 1 is the lift itself (0.02 = two points).
    """
    target = brief.kpi.target
    if target <= 0:
        return None
    if target > 1:
        return target / treated if treated else None
    return target


def power_warning(brief: Brief) -> str | None:
    """One line when the brief's holdout is too small to detect its target (None when it is not)."""
    share = brief.control_group.percent / 100
    size = brief.expected_audience.min
    nc = round(size * share)
    nt = size - nc
    if share <= 0:
        return ("control_group.percent is 0: without a holdout the campaign's effect on "
                f"{brief.kpi.metric} cannot be measured; hold out e.g. 10 %")
    want = target_lift(brief, nt)
    mde = minimum_detectable_effect(nt, nc, PLANNING_RATE)
    if want is None or mde is None or mde <= want:
        return None
    return (f"control_group.percent {brief.control_group.percent:g} is too small to detect the "
            f"target: at the expected minimum audience of {size:,} ({nt:,} treated, {nc:,} held out) "
            f"the smallest lift found with {POWER:.0%} power at {ALPHA:.0%} two-sided is "
            f"{mde:.2%} (baseline rate assumed {PLANNING_RATE:.0%}, the worst case), the target "
            f"needs {want:.2%}; enlarge the holdout or the audience")


def _send_times(wh: Warehouse, run_id: str) -> dict[str | None, dt.datetime]:
    """The earliest contact-history send per cell of the run."""
    h = contact_history
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(h.c.cell, sa.func.min(h.c.sent_at))
                            .where(h.c.run_id == run_id).group_by(h.c.cell)).all()
    return {cell: when for cell, when in rows if when is not None}


def _sent_run(wh: Warehouse, run_id: str) -> runs.RunRecord:
    try:
        run = runs.get_run(wh.engine, run_id)
    except ResultsUnavailable:
        raise
    except CampaignOpsError:
        raise ResultsUnavailable(f"no run {run_id}: name a sent run (see `campaignops kpis --per-run`)") from None
    if run.status != runs.SENT or run.dry_run:
        raise ResultsUnavailable(f"run {run_id} never sent (status {run.status}): results exist only "
                                 "for a sent run; send it or name another run")
    return run


def run_results(wh: Warehouse, run_id: str, now: dt.datetime | None = None,
                window_days: int | None = None) -> RunResults:
    """The results of a sent run: treated vs holdout per cell and in total, with notes."""
    run = _sent_run(wh, run_id)
    brief = run.brief
    metric = resolve(brief.kpi.metric)
    if metric is None:  # a brief accepted before the vocabulary was closed
        raise ResultsUnavailable(f"run {run_id}: kpi.metric {brief.kpi.metric!r} is not measurable; "
                                 "see docs/results.md for the metrics")
    times = _send_times(wh, run_id)
    if times:
        sent_at = min(times.values())
    elif brief.send_at is not None:
        sent_at = runs.utc_naive(brief.send_at)
    else:
        raise ResultsUnavailable(f"run {run_id} has no send time (no contact history, no send_at): "
                                 "run `campaignops resume` to record its contact history")
    end = runs.utc_naive(now) if now is not None else runs.utcnow()
    if window_days is not None:
        end = min(end, sent_at + dt.timedelta(days=window_days))
    if end <= sent_at:
        raise ResultsUnavailable(f"run {run_id} was sent at {sent_at:%Y-%m-%d %H:%M} UTC, after the "
                                 "end of the window: measure later")
    counts, curve_counts = _outcomes(wh, run_id, metric, sent_at, end)
    control_n, control_x = counts.pop(None, (0, 0))
    cells = tuple(compare(c.name, *counts.get(c.name, (0, 0)), control_n, control_x) for c in brief.cells)
    nt = sum(c.treated for c in cells)
    xt = sum(c.treated_conversions for c in cells)
    total = compare("all cells", nt, xt, control_n, control_x)
    want = target_lift(brief, nt)
    kind = "incremental conversions" if brief.kpi.target > 1 else "absolute lift"
    progress = None
    if total.lift is not None and brief.kpi.target > 0:
        progress = ((total.incremental or 0.0) / brief.kpi.target if brief.kpi.target > 1
                    else total.lift / brief.kpi.target)
    notes = _notes(wh, run_id, total, cells, want, times, sent_at, end)
    curve = {name: [(d, x / n) for d, x in points] for name, (n, points) in curve_counts.items() if n}
    return RunResults(run_id, run.campaign_id, metric.name, metric.definition, sent_at, end,
                      brief.kpi.target, kind, total, cells, progress, tuple(notes), curve)


def _outcomes(wh: Warehouse, run_id: str, metric: Metric, sent_at: dt.datetime, end: dt.datetime
              ) -> tuple[dict[str | None, tuple[int, int]], dict[str, tuple[int, list[tuple[int, int]]]]]:
    """Per cell (None: the holdout) recipients and converters, and converters by day since send."""
    col = customers.c[metric.column]
    elapsed = (end - sent_at).days
    days = list(range(1, min(elapsed, CHART_DAYS) + 1))
    by_day = [sa.func.sum(sa.case((sa.and_(col > sent_at, col <= sent_at + dt.timedelta(days=d)), 1),
                                  else_=0)).label(f"d{d}") for d in days]
    converted = sa.func.sum(sa.case((sa.and_(col > sent_at, col <= end), 1), else_=0))
    q = (sa.select(audience.c.outcome, audience.c.cell, sa.func.count().label("n"),
                   converted.label("x"), *by_day)
         .select_from(audience.join(customers, customers.c.customer_id == audience.c.customer_id))
         .where(audience.c.run_id == run_id, audience.c.outcome.in_(("send", "control")),
                audience.c.is_seed == sa.false())
         .group_by(audience.c.outcome, audience.c.cell))
    counts: dict[str | None, tuple[int, int]] = {}
    curves: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    with wh.engine.connect() as conn:
        rows = conn.execute(q).all()
    for r in rows:
        key = None if r.outcome == "control" else r.cell
        counts[key] = (int(r.n), int(r.x or 0))
        points = [(d, int(getattr(r, f"d{d}") or 0)) for d in days]
        curves[key or "holdout"] = (int(r.n), points)
    treated = [v for k, v in curves.items() if k != "holdout"]
    if len(treated) > 1:
        n = sum(t[0] for t in treated)
        curves["all cells"] = (n, [(d, sum(t[1][i][1] for t in treated)) for i, d in enumerate(days)])
    return counts, curves


def _pressure(wh: Warehouse, run_id: str, sent_at: dt.datetime, end: dt.datetime) -> dict[str, float]:
    """Other campaigns' contacts per customer in the window, per arm (send, control)."""
    h = contact_history
    joined = audience.join(h, sa.and_(h.c.customer_id == audience.c.customer_id, h.c.run_id != run_id,
                                      h.c.sent_at > sent_at, h.c.sent_at <= end))
    base = (audience.c.run_id == run_id, audience.c.outcome.in_(("send", "control")),
            audience.c.is_seed == sa.false())
    with wh.engine.connect() as conn:
        contacts = {str(a): int(n) for a, n in conn.execute(
            sa.select(audience.c.outcome, sa.func.count()).select_from(joined).where(*base)
            .group_by(audience.c.outcome))}
        sizes = {str(a): int(n) for a, n in conn.execute(
            sa.select(audience.c.outcome, sa.func.count()).where(*base).group_by(audience.c.outcome))}
    return {arm: contacts.get(arm, 0) / n for arm, n in sizes.items() if n}


def _notes(wh: Warehouse, run_id: str, total: Comparison, cells: tuple[Comparison, ...],
           want: float | None, times: dict[str | None, dt.datetime], sent_at: dt.datetime,
           end: dt.datetime) -> list[str]:
    """Why the comparison cannot be trusted, if it cannot."""
    notes: list[str] = []
    if total.control == 0:
        notes.append("no holdout: the run held nobody out, so no lift can be measured")
        return notes
    if total.treated == 0:
        notes.append("nobody treated: the run's cells are empty")
        return notes
    if total.mde is not None:
        seen = abs(total.lift or 0.0)
        bar = max(seen, want or 0.0)
        if total.mde > bar:
            what = (f"the target lift {want:.2%}" if want is not None and want >= seen
                    else f"the observed lift {seen:.2%}")
            notes.append(f"holdout too small: at {total.treated:,} treated and {total.control:,} held "
                         f"out the minimum detectable lift ({POWER:.0%} power, {ALPHA:.0%} two-sided) "
                         f"is {total.mde:.2%}, larger than {what}")
    cell_times = [t for c, t in times.items() if c is not None]
    if cell_times and max(cell_times) - min(cell_times) > SEND_SPREAD:
        notes.append(f"arms sent at different times: the cells' first sends are "
                     f"{(max(cell_times) - min(cell_times)).total_seconds() / 3600:.1f} h apart")
    pressure = _pressure(wh, run_id, sent_at, end)
    t, c = pressure.get("send", 0.0), pressure.get("control", 0.0)
    if abs(t - c) > PRESSURE_GAP:
        notes.append(f"unequal contact pressure: other campaigns reached the treated {t:.2f} times "
                     f"a customer and the holdout {c:.2f} times in the window")
    return notes


def recent_sent_runs(wh: Warehouse, days: int = 30, now: dt.datetime | None = None) -> list[str]:
    """Sent (not dry) runs whose send was recorded in the last ``days`` days, oldest first."""
    since = (runs.utc_naive(now) if now is not None else runs.utcnow()) - dt.timedelta(days=days)
    r = runs_table
    with wh.engine.connect() as conn:
        return list(conn.execute(
            sa.select(r.c.run_id).where(r.c.status == runs.SENT, r.c.dry_run == sa.false(),
                                        r.c.updated_at >= since).order_by(r.c.updated_at)).scalars())


def chart_svg(res: RunResults, width: int = 560, height: int = 240) -> str:
    """Cumulative conversion by day since the send, one line per cell and the holdout (SVG)."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    pad = 40
    series = list(res.curve.items())
    top = max((rate for _, pts in series for _, rate in pts), default=0.0) or 1.0
    last = max((d for _, pts in series for d, _ in pts), default=1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{pad}" y="14">{res.metric}: converted share by day since send</text>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" stroke="#444"/>',
           f'<line x1="{pad}" y1="20" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
           f'<text x="4" y="26">{top:.1%}</text><text x="{width - 60}" y="{height - pad + 14}">day {last}</text>']
    for i, (name, pts) in enumerate(series):
        colour = "#777" if name == "holdout" else colours[i % len(colours)]
        xy = " ".join(f"{pad + (width - pad - 10) * d / last:.1f},"
                      f"{height - pad - (height - pad - 20) * rate / top:.1f}" for d, rate in pts)
        dash = ' stroke-dasharray="4 3"' if name == "holdout" else ""
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{xy}"/>')
        out.append(f'<text x="{pad + 8}" y="{34 + 13 * i}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _pts(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:+.2%}, {high:+.2%}]"


def result_rows(res: RunResults) -> list[dict[str, str]]:
    """One row per cell and the total: the table the CLI and the artifact print (counts only)."""
    rows = []
    for c in (*res.cells, res.total):
        rows.append({
            "cell": c.name, "treated": f"{c.treated:,}", "converted": f"{c.treated_conversions:,}",
            "rate": _pct(c.treated_rate), "holdout": f"{c.control:,}",
            "holdout converted": f"{c.control_conversions:,}", "holdout rate": _pct(c.control_rate),
            "lift": "-" if c.lift is None else f"{c.lift:+.2%}", "95% CI": _pts(c.lift_low, c.lift_high),
            "relative": "-" if c.relative_lift is None else f"{c.relative_lift:+.1%}",
            "p-value": "-" if c.p_value is None else f"{c.p_value:.3g}",
            "incremental": "-" if c.incremental is None else f"{c.incremental:,.0f}",
            "MDE": _pct(c.mde),
        })
    return rows


def summary_lines(res: RunResults) -> list[str]:
    """The run's headline: metric, window, target and progress, then the notes."""
    lines = [f"{res.metric} ({res.definition}); sent {res.sent_at:%Y-%m-%d %H:%M} UTC, "
             f"measured to {res.measured_to:%Y-%m-%d %H:%M} UTC",
             f"target: {res.target:g} {res.target_kind}; progress: "
             + ("-" if res.progress is None else f"{res.progress:.0%}")]
    lines += [f"note: {n}" for n in res.notes]
    return lines


def write_chart(res: RunResults, folder: Path) -> Path:
    """The chart as ``folder/<run_id>.svg`` (rewritten on each refresh); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', res.run_id)}.svg"
    path.write_text(chart_svg(res), encoding="utf-8")
    return path.resolve()
