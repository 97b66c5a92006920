"""The campaign calendar: recent and coming sends by day, and audience overlaps (docs/kpis.md).

Entries come from the run register: sends of the last `days`, one-off runs
booked for the next `days` (a send_at in the window), and the occurrences of
each recurring campaign's cron in the next `days`. On a day with sends of two
campaigns, the share of people both would reach (co_audience, outcome 'send',
the same customer_id) is counted in the database relative to the smaller
audience; beyond the threshold the day is flagged.

The overlaps of a day are counted in one aggregate pass over that day's runs'
rows, not by joining runs pairwise: co_audience is indexed on run_id only (as
segmentation needs it), so a join on customer_id compares every row of one run
with every row of the other (two sends of ~400k took over 10 minutes).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from cronsim import CronSim, CronSimError
from sqlalchemy.engine import Connection, Engine

from campaignops import runs as run_status
from campaignops.schema import audience, runs

# Kinds of entry.
SENT, BOOKED, PENDING, SCHEDULED = "sent", "booked", "pending", "scheduled"
# A one-off run in these statuses may still send at its send_at.
OPEN_STATUSES = (run_status.INTAKE, run_status.SEGMENTED, run_status.QA_PASSED,
                 run_status.AWAITING, run_status.APPROVED, run_status.HANDING_OFF)


@dataclass(frozen=True)
class CalendarEntry:
    """One send on the calendar."""

    at: dt.datetime  # naive UTC
    kind: str  # sent | booked | pending | scheduled
    campaign_id: str
    run_id: str  # for 'scheduled', the run whose audience is the estimate ("" if none)
    status: str  # the run's status ('scheduled' for a cron occurrence)
    recipients: int | None  # as the run reported them (seeds included)
    audience: int  # distinct customers with outcome 'send': the overlap base
    estimate: bool  # the audience is the campaign's latest run's, not this send's
    detail: str = ""  # cron and time zone, or the send_at rule


@dataclass(frozen=True)
class Overlap:
    """Two campaigns' sends on the same day and the people they share."""

    first: CalendarEntry
    second: CalendarEntry
    shared: int  # customers in both audiences
    base: int  # the smaller audience
    percent: float  # 100 * shared / base (0 when base is 0)
    flagged: bool  # percent above the threshold


@dataclass(frozen=True)
class CalendarDay:
    """The entries of one day, in time order, and the overlaps among them."""

    day: dt.date
    entries: list[CalendarEntry]
    overlaps: list[Overlap] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Some pair of campaigns overlaps beyond the threshold on this day."""
        return any(o.flagged for o in self.overlaps)


@dataclass(frozen=True)
class Calendar:
    """Days with sends from now - days to now + days (days without sends are left out)."""

    now: dt.datetime  # naive UTC
    start: dt.datetime
    end: dt.datetime
    tz: str
    overlap_threshold: float
    days: list[CalendarDay]

    @property
    def flagged_days(self) -> list[dt.date]:
        """The days where two campaigns hit the same people beyond the threshold."""
        return [d.day for d in self.days if d.flagged]


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _brief(brief_json: str) -> dict[str, Any]:
    try:
        data = json.loads(brief_json)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _send_at(brief: dict[str, Any]) -> dt.datetime | None:
    value = brief.get("send_at")
    return _naive_utc(dt.datetime.fromisoformat(value)) if value else None


def occurrences(cron: str, timezone: str, after: dt.datetime,
                until: dt.datetime) -> list[dt.datetime]:
    """Times (naive UTC) the cron fires in its time zone, after `after` up to `until`."""
    tz = ZoneInfo(timezone)
    start = after.replace(tzinfo=dt.UTC).astimezone(tz)
    out = []
    try:
        for t in CronSim(cron, start):
            at = _naive_utc(t)
            if at > until:
                break
            out.append(at)
    except CronSimError:
        return []
    return out


def _sizes(conn: Connection, run_ids: set[str], unique: frozenset[str] = frozenset()) -> dict[str, int]:
    """Distinct customers with outcome 'send' per run, counted in the database.

    Runs in `unique` are known to hold each customer once (an overlap pass found no
    repeats), so their rows are counted without the cost of DISTINCT.
    """
    out: dict[str, int] = {}
    a = audience.c
    for ids, counted in ((run_ids & unique, sa.func.count()),
                         (run_ids - unique, sa.func.count(sa.distinct(a.customer_id)))):
        if ids:
            q = (sa.select(a.run_id, counted)
                 .where(a.run_id.in_(sorted(ids)), a.outcome == "send", a.customer_id.is_not(None))
                 .group_by(a.run_id))
            out.update({r[0]: int(r[1]) for r in conn.execute(q)})
    return out


# Runs counted in one pass: each run is a bit of a per-customer sum, kept below 2**31 so
# the sum fits a 32-bit integer's SUM on every database, duplicates or not.
PASS_RUNS = 31


def _membership(run_ids: list[str], *, distinct: bool) -> sa.Select[Any]:
    """(mask, rows, customers) for the customers of two or more of the runs, in one pass.

    Each run is a bit; per customer, ``mask`` sums the bits of its rows and ``rows``
    counts them, then customers are counted per (mask, rows). ``distinct`` first
    drops repeated (customer, run) rows, for a table that has any.
    """
    a = audience.c
    bit = sa.case(*[(a.run_id == r, sa.literal(1 << i)) for i, r in enumerate(run_ids)])
    rows = (
        sa.select(a.customer_id, bit.label("bit"))
        .where(a.run_id.in_(run_ids), a.outcome == "send", a.customer_id.is_not(None))
    )
    if distinct:
        rows = rows.distinct()
    src = rows.subquery("member_rows")
    per_customer = (
        sa.select(sa.func.sum(src.c.bit).label("mask"), sa.func.count().label("rows"))
        .group_by(src.c.customer_id)
        .having(sa.func.count() > 1)
        .subquery("per_customer")
    )
    return sa.select(per_customer.c.mask, per_customer.c.rows, sa.func.count()).group_by(
        per_customer.c.mask, per_customer.c.rows
    )


def _pass(conn: Connection, run_ids: list[str]) -> tuple[Counter[tuple[str, str]], bool]:
    """Customers shared by each pair of at most PASS_RUNS runs, from one aggregate query;
    and whether every customer is in each run at most once."""
    shared: Counter[tuple[str, str]] = Counter()
    groups = conn.execute(_membership(run_ids, distinct=False)).all()
    # A sum of n distinct bits has n bits set; a customer with a run's row twice has fewer
    # (carries), and only then is the pass made again without the repeats.
    unique = all(int(mask).bit_count() == n for mask, n, _ in groups)
    if not unique:
        groups = conn.execute(_membership(run_ids, distinct=True)).all()
    for mask, _n, customers in groups:
        members = [r for i, r in enumerate(run_ids) if int(mask) >> i & 1]
        for pair in combinations(members, 2):
            shared[pair] += int(customers)
    return shared, unique


def _overlaps(conn: Connection, run_ids: Iterable[str]) -> tuple[dict[tuple[str, str], int], bool]:
    """overlap_counts, and whether no customer is in any of the runs twice."""
    ids = sorted(set(run_ids))
    if len(ids) <= PASS_RUNS:
        shared, unique = _pass(conn, ids)
        return dict(shared), unique
    # More runs than bits: every pair of half-size groups once (each pair of runs shares one).
    half = PASS_RUNS // 2
    chunks = [ids[i:i + half] for i in range(0, len(ids), half)]
    out: dict[tuple[str, str], int] = {}
    all_unique = True
    for first, second in combinations(chunks, 2):
        shared, unique = _pass(conn, first + second)
        out.update(shared)
        all_unique &= unique
    return out, all_unique


def overlap_counts(conn: Connection, run_ids: Iterable[str]) -> dict[tuple[str, str], int]:
    """Customers each pair of the runs both send to, keyed (lower run id, higher), counted in
    the database: one aggregate pass for up to PASS_RUNS runs (pairs with none are left out)."""
    return _overlaps(conn, run_ids)[0]


def shared_recipients(conn: Connection, run_a: str, run_b: str) -> int:
    """Customers both runs send to, counted in the database."""
    if run_a == run_b:
        return _sizes(conn, {run_a}).get(run_a, 0)
    return overlap_counts(conn, (run_a, run_b)).get((min(run_a, run_b), max(run_a, run_b)), 0)


def _entries(conn: Connection, now: dt.datetime, start: dt.datetime,
             end: dt.datetime) -> list[CalendarEntry]:
    """Every send in [start, end] (audience sizes still 0: calendar() counts them)."""
    raw: list[tuple[dt.datetime, str, str, str, str, int | None, bool, str]] = []
    # Sent runs: those marked sent in the window, plus any with a send_at (possibly booked
    # long ago for a date in the window); an as-soon-as-approved brief stores "send_at": null.
    sent = conn.execute(
        sa.select(runs.c.run_id, runs.c.campaign_id, runs.c.updated_at, runs.c.recipients,
                  runs.c.brief_json)
        .where(runs.c.status == run_status.SENT, runs.c.dry_run.is_not(True),
               sa.or_(runs.c.updated_at >= start, runs.c.brief_json.not_like('%"send_at": null%')))
    ).all()
    for r in sent:
        brief = _brief(r.brief_json)
        send_at = _send_at(brief)
        at = send_at or r.updated_at
        if start <= at <= end:
            kind = SENT if at <= now else BOOKED
            detail = "send_at" if send_at else "as soon as approved"
            raw.append((at, kind, r.campaign_id, r.run_id, run_status.SENT, r.recipients, False,
                        detail))
    # One-off runs still on their way to a send_at in the future part of the window.
    pending = conn.execute(
        sa.select(runs.c.run_id, runs.c.campaign_id, runs.c.status, runs.c.recipients,
                  runs.c.brief_json)
        .where(runs.c.status.in_(OPEN_STATUSES), runs.c.dry_run.is_not(True))
    ).all()
    for r in pending:
        send_at = _send_at(_brief(r.brief_json))
        if send_at is not None and now < send_at <= end:
            raw.append((send_at, PENDING, r.campaign_id, r.run_id, r.status, r.recipients, False,
                        "send_at"))
    # Recurring campaigns: the schedule of each campaign's latest run, the audience of its
    # latest run that has one.
    latest = _latest_per_campaign(conn, with_audience=False)
    estimate = _latest_per_campaign(conn, with_audience=True)
    for campaign_id, (_run_id, brief_json, _recipients) in latest.items():
        schedule = _brief(brief_json).get("schedule")
        if not isinstance(schedule, dict) or not schedule.get("cron"):
            continue
        cron, tz = str(schedule["cron"]), str(schedule.get("timezone") or "UTC")
        est_run, _b, est_recipients = estimate.get(campaign_id, ("", "", None))
        for at in occurrences(cron, tz, now, end):
            raw.append((at, SCHEDULED, campaign_id, est_run, SCHEDULED, est_recipients, True,
                        f"{cron} {tz}"))
    return [
        CalendarEntry(at=at, kind=kind, campaign_id=c, run_id=run_id, status=status,
                      recipients=None if rec is None else int(rec), audience=0,
                      estimate=est, detail=detail)
        for at, kind, c, run_id, status, rec, est, detail in raw
    ]


def _latest_per_campaign(conn: Connection,
                         with_audience: bool) -> dict[str, tuple[str, str, int | None]]:
    """campaign_id -> (run_id, brief_json, recipients) of its newest run (that has an audience)."""
    rank = sa.func.row_number().over(
        partition_by=runs.c.campaign_id,
        order_by=(runs.c.created_at.desc(), runs.c.run_id.desc()),
    ).label("rank")
    inner = sa.select(runs.c.campaign_id, runs.c.run_id, runs.c.brief_json, runs.c.recipients, rank)
    if with_audience:
        inner = inner.where(runs.c.recipients.is_not(None))
    sub = inner.subquery()
    rows = conn.execute(
        sa.select(sub.c.campaign_id, sub.c.run_id, sub.c.brief_json, sub.c.recipients)
        .where(sub.c.rank == 1)
    ).all()
    return {r.campaign_id: (r.run_id, r.brief_json, r.recipients) for r in rows}


def calendar(engine: Engine, days: int = 14, overlap_threshold: float = 5.0,
             now: dt.datetime | None = None, tz: str = "UTC") -> Calendar:
    """Sends of the last `days` and the next `days`, grouped by day in `tz`, with the
    overlaps between different campaigns on the same day."""
    now = _naive_utc(now) if now is not None else run_status.utcnow()
    start, end = now - dt.timedelta(days=days), now + dt.timedelta(days=days)
    zone = ZoneInfo(tz)

    def local_day(t: dt.datetime) -> dt.date:
        return t.replace(tzinfo=dt.UTC).astimezone(zone).date()

    with engine.connect() as conn:
        entries = sorted(_entries(conn, now, start, end),
                         key=lambda e: (e.at, e.campaign_id, e.run_id))
        days_runs: dict[dt.date, set[tuple[str, str]]] = {}
        for e in entries:
            days_runs.setdefault(local_day(e.at), set()).add((e.campaign_id, e.run_id))
        # One pass over each day's runs counts every pair of them; a pass also tells
        # whether its runs hold each customer once, which makes their sizes a plain count.
        counted: dict[tuple[str, str], int] = {}
        done: set[frozenset[str]] = set()
        unique: set[str] = set()
        for day in sorted(days_runs):
            ids = frozenset(r for _c, r in days_runs[day] if r)
            if len({c for c, r in days_runs[day] if r}) < 2 or ids in done:
                continue
            shared, clean = _overlaps(conn, ids)
            counted.update(shared)
            done.add(ids)
            if clean:
                unique |= ids
        sizes = _sizes(conn, {e.run_id for e in entries if e.run_id}, frozenset(unique))
    entries = [replace(e, audience=sizes.get(e.run_id, 0)) for e in entries]
    by_day: dict[dt.date, list[CalendarEntry]] = {}
    for e in entries:
        by_day.setdefault(local_day(e.at), []).append(e)
    out = []
    for day in sorted(by_day):
        overlaps = []
        for a, b in combinations(by_day[day], 2):
            if a.campaign_id == b.campaign_id or not a.run_id or not b.run_id:
                continue
            shared_n = counted.get((min(a.run_id, b.run_id), max(a.run_id, b.run_id)), 0)
            base = min(a.audience, b.audience)
            percent = round(100.0 * shared_n / base, 2) if base else 0.0
            overlaps.append(Overlap(a, b, shared_n, base, percent, percent > overlap_threshold))
        out.append(CalendarDay(day, by_day[day], overlaps))
    return Calendar(now=now, start=start, end=end, tz=tz, overlap_threshold=overlap_threshold,
                    days=out)


def render_calendar_text(cal: Calendar) -> str:
    """The calendar for the terminal: one block per day, overlaps beyond the threshold marked."""
    zone = ZoneInfo(cal.tz)

    def local(t: dt.datetime) -> dt.datetime:
        return t.replace(tzinfo=dt.UTC).astimezone(zone)

    lines = [
        f"Campaign calendar {local(cal.start):%Y-%m-%d} .. {local(cal.end):%Y-%m-%d} ({cal.tz}), "
        f"now {local(cal.now):%Y-%m-%d %H:%M}; overlaps above {cal.overlap_threshold:g}% "
        "of the smaller audience are flagged",
    ]
    if not cal.days:
        lines.append("No sends in this window.")
        return "\n".join(lines)
    width = max(len(e.campaign_id) for d in cal.days for e in d.entries)
    for d in cal.days:
        lines += ["", f"{d.day:%Y-%m-%d %a}" + ("  !! OVERLAP" if d.flagged else "")]
        for e in d.entries:
            who = "-" if e.recipients is None else f"{e.recipients:,}"
            if e.kind == SCHEDULED:
                size = (f"~{who} recipients (estimate from run {e.run_id})" if e.run_id
                        else "no earlier run to estimate from")
                what = f"{size}; cron {e.detail}"
            else:
                what = f"{who} recipients; run {e.run_id}"
                if e.kind == PENDING:
                    what += f" ({e.status})"
            lines.append(f"  {local(e.at):%H:%M}  {e.kind:<9}  {e.campaign_id:<{width}}  {what}")
        for o in d.overlaps:
            if o.shared == 0 and not o.flagged:
                continue
            mark = "!!" if o.flagged else "  "
            lines.append(
                f"  {mark} overlap {o.first.campaign_id} x {o.second.campaign_id}: "
                f"{o.shared:,} people in both = {o.percent:g}% of the smaller audience "
                f"({o.base:,})" + (" (estimated)" if o.first.estimate or o.second.estimate else "")
            )
    flagged = cal.flagged_days
    lines += ["", f"{len(flagged)} day(s) flagged" + (
        ": " + ", ".join(f"{d:%Y-%m-%d}" for d in flagged) if flagged else "")]
    return "\n".join(lines)


def calendar_table_rows(cal: Calendar) -> list[dict[str, Any]]:
    """One dict per send, for a Prefect table artifact (times in the calendar's time zone)."""
    zone = ZoneInfo(cal.tz)
    rows = []
    for d in cal.days:
        for e in d.entries:
            mine = [o for o in d.overlaps if o.first is e or o.second is e]
            worst = max((o.percent for o in mine), default=None)
            rows.append({
                "day": f"{d.day:%Y-%m-%d %a}",
                "time": f"{e.at.replace(tzinfo=dt.UTC).astimezone(zone):%H:%M}",
                "kind": e.kind,
                "campaign": e.campaign_id,
                "run": e.run_id or "-",
                "recipients": "-" if e.recipients is None else
                              (f"~{e.recipients}" if e.estimate else e.recipients),
                "max overlap %": "-" if worst is None else worst,
                "flagged": "yes" if any(o.flagged for o in mine) else "",
            })
    return rows


def render_calendar_markdown(cal: Calendar) -> str:
    """The calendar as markdown, for a Prefect markdown artifact."""
    lines = [f"## Campaign calendar ({cal.tz})", "",
             f"Overlaps above {cal.overlap_threshold:g}% of the smaller audience are flagged.", ""]
    rows = calendar_table_rows(cal)
    if not rows:
        return "\n".join(lines + ["No sends in this window."])
    cols = list(rows[0])
    lines += ["| " + " | ".join(cols) + " |",
              "|" + "|".join("---:" if c in ("recipients", "max overlap %") else "---"
                             for c in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    flagged = [(d.day, o) for d in cal.days for o in d.overlaps if o.flagged]
    if flagged:
        lines += ["", "**Flagged overlaps**", ""]
        lines += [f"- {day:%Y-%m-%d}: {o.first.campaign_id} x {o.second.campaign_id}, "
                  f"{o.shared:,} people in both = {o.percent:g}% of {o.base:,}"
                  + (" (estimated)" if o.first.estimate or o.second.estimate else "")
                  for day, o in flagged]
    return "\n".join(lines)
