"""The campaign calendar on a register of runs and audiences built row by row."""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy import event
from sqlalchemy.engine import Engine

from campaignops import migrations
from campaignops import runs as rs
from campaignops.brief import Brief
from campaignops.calendar import (
    BOOKED,
    PENDING,
    SCHEDULED,
    SENT,
    Calendar,
    calendar,
    calendar_table_rows,
    occurrences,
    overlap_counts,
    render_calendar_markdown,
    render_calendar_text,
    shared_recipients,
)
from campaignops.schema import audience, runs
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit

pytestmark = pytest.mark.unit

BRIEFS = Path(__file__).resolve().parents[1] / "examples" / "briefs"
NOW = dt.datetime(2026, 11, 12, 12, 0)  # a Thursday; New York is on EST (UTC-5)
D = dt.datetime


def brief_json(campaign_id: str, *, send_at: dt.datetime | None = None,
               cron: str | None = None, timezone: str = "America/New_York") -> str:
    """A real, valid brief as register_run stores it."""
    data = yaml.safe_load((BRIEFS / "winback.yaml").read_text(encoding="utf-8"))
    data.update(campaign_id=campaign_id,
                send_at=send_at.replace(tzinfo=dt.UTC).isoformat() if send_at else None)
    if cron is not None:
        data["schedule"] = {"cron": cron, "timezone": timezone}
    return json.dumps(Brief.model_validate(data).model_dump(mode="json"), sort_keys=True)


def add_run(engine: Engine, run_id: str, campaign_id: str, status: str, *, created: dt.datetime,
            updated: dt.datetime | None = None, brief: str | None = None,
            recipients: int | None = None, dry_run: bool = False,
            send: Iterable[int] = (), control: Iterable[int] = (), excluded: Iterable[int] = (),
            seeds: int = 0) -> None:
    """A co_runs row and its co_audience rows."""
    with engine.begin() as conn:
        conn.execute(sa.insert(runs).values(
            run_id=run_id, campaign_id=campaign_id, brief_digest="0" * 64,
            brief_json=brief or brief_json(campaign_id), brief_source=f"{campaign_id}.yaml",
            dry_run=dry_run, status=status, created_at=created, updated_at=updated or created,
            as_of=created, recipients=recipients, contact_history_written=status == rs.SENT,
        ))
        rows = [{"customer_id": c, "outcome": o} for o, ids in
                (("send", send), ("control", control), ("excluded", excluded)) for c in ids]
        rows += [{"customer_id": None, "outcome": "seed"} for _ in range(seeds)]
        if rows:
            conn.execute(sa.insert(audience), [
                {"run_id": run_id, "email": f"p{r['customer_id']}@example.com",
                 "address_key": f"p{r['customer_id']}@example.com",
                 "is_seed": r["outcome"] == "seed"} | r for r in rows])


@pytest.fixture
def register(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    weekly = brief_json("weekly-newsletter", cron="0 9 * * MON")
    # weekly-newsletter: sent twice; its newest run failed before segmenting (no audience),
    # and that run's brief added Thursdays: the schedule comes from it, the estimate from nl-2.
    add_run(engine, "nl-1", "weekly-newsletter", rs.SENT, created=D(2026, 11, 2, 14, 0),
            updated=D(2026, 11, 2, 14, 5), brief=weekly, recipients=3, send=[1, 2, 3])
    add_run(engine, "nl-2", "weekly-newsletter", rs.SENT, created=D(2026, 11, 9, 14, 0),
            updated=D(2026, 11, 9, 14, 5), brief=weekly, recipients=11, send=range(1, 11),
            control=[11, 12], excluded=[26], seeds=1)
    add_run(engine, "nl-3", "weekly-newsletter", rs.FAILED, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("weekly-newsletter", cron="0 9 * * MON,THU"))
    # spring-winback: booked long ago for Nov 6; handed off Nov 8 for Nov 9 16:00.
    add_run(engine, "wb-0", "spring-winback", rs.SENT, created=D(2026, 10, 1, 9, 0),
            brief=brief_json("spring-winback", send_at=D(2026, 11, 6, 9, 0)), recipients=10,
            send=range(500, 510))
    add_run(engine, "wb-1", "spring-winback", rs.SENT, created=D(2026, 11, 8, 10, 0),
            brief=brief_json("spring-winback", send_at=D(2026, 11, 9, 16, 0)), recipients=21,
            send=range(6, 27), control=[11, 12])
    # Two sends on Nov 10 sharing exactly 5 % of the smaller audience.
    add_run(engine, "ly-1", "loyalty", rs.SENT, created=D(2026, 11, 10, 9, 0),
            updated=D(2026, 11, 10, 10, 0), recipients=100, send=range(100, 200))
    add_run(engine, "pr-1", "promo", rs.SENT, created=D(2026, 11, 10, 17, 0),
            updated=D(2026, 11, 10, 18, 0), recipients=200, send=range(195, 395))
    # Coming: a one-off awaiting approval for Monday, one already handed off for Nov 18.
    add_run(engine, "fl-1", "flash-sale", rs.AWAITING, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("flash-sale", send_at=D(2026, 11, 16, 15, 0)), recipients=40,
            send=range(1, 41))
    add_run(engine, "bk-1", "black-friday", rs.SENT, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("black-friday", send_at=D(2026, 11, 18, 10, 0)), recipients=10,
            send=range(1000, 1010))
    # A recurring campaign with no audience yet: listed, no estimate, no overlap.
    add_run(engine, "dd-1", "daily-digest", rs.FAILED, created=D(2026, 11, 1, 7, 30),
            brief=brief_json("daily-digest", cron="30 7 * * *", timezone="UTC"))
    # Not on the calendar: a dry run, an expired one-off, a rejected one.
    add_run(engine, "dr-1", "quick-count", rs.COUNTED, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("quick-count", send_at=D(2026, 11, 15, 9, 0)), dry_run=True,
            recipients=5, send=range(1, 6))
    add_run(engine, "ex-1", "expired-offer", rs.EXPIRED, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("expired-offer", send_at=D(2026, 11, 15, 9, 0)), recipients=5,
            send=range(1, 6))
    add_run(engine, "rj-1", "rejected-offer", rs.REJECTED, created=D(2026, 11, 11, 9, 0),
            brief=brief_json("rejected-offer", send_at=D(2026, 11, 15, 9, 0)), recipients=5,
            send=range(1, 6))
    yield engine
    engine.dispose()


def entries(cal: Calendar) -> list[tuple[str, str, str, str, str, int | None, int, bool]]:
    return [(f"{e.at:%m-%d %H:%M}", e.kind, e.campaign_id, e.run_id, e.status, e.recipients,
             e.audience, e.estimate) for d in cal.days for e in d.entries]


def test_calendar_days_and_overlaps(register: Engine) -> None:
    cal = calendar(register, days=7, overlap_threshold=5.0, now=NOW)
    assert (cal.start, cal.end) == (D(2026, 11, 5, 12, 0), D(2026, 11, 19, 12, 0))
    dd = ("daily-digest", "", SCHEDULED, None, 0, True)
    wk = ("weekly-newsletter", "nl-2", SCHEDULED, 11, 10, True)
    assert entries(cal) == [
        ("11-06 09:00", SENT, "spring-winback", "wb-0", rs.SENT, 10, 10, False),
        ("11-09 14:05", SENT, "weekly-newsletter", "nl-2", rs.SENT, 11, 10, False),
        ("11-09 16:00", SENT, "spring-winback", "wb-1", rs.SENT, 21, 21, False),
        ("11-10 10:00", SENT, "loyalty", "ly-1", rs.SENT, 100, 100, False),
        ("11-10 18:00", SENT, "promo", "pr-1", rs.SENT, 200, 200, False),
        ("11-12 14:00", SCHEDULED, *wk),
        ("11-13 07:30", SCHEDULED, *dd),
        ("11-14 07:30", SCHEDULED, *dd),
        ("11-15 07:30", SCHEDULED, *dd),
        ("11-16 07:30", SCHEDULED, *dd),
        ("11-16 14:00", SCHEDULED, *wk),
        ("11-16 15:00", PENDING, "flash-sale", "fl-1", rs.AWAITING, 40, 40, False),
        ("11-17 07:30", SCHEDULED, *dd),
        ("11-18 07:30", SCHEDULED, *dd),
        ("11-18 10:00", BOOKED, "black-friday", "bk-1", rs.SENT, 10, 10, False),
        ("11-19 07:30", SCHEDULED, *dd),
    ]
    days = {d.day: d for d in cal.days}
    nov9 = days[dt.date(2026, 11, 9)].overlaps
    # 6..10 are in both; control 11, 12 and excluded 26 are not sent to: 5 of the smaller 10.
    assert [(o.first.run_id, o.second.run_id, o.shared, o.base, o.percent, o.flagged)
            for o in nov9] == [("nl-2", "wb-1", 5, 10, 50.0, True)]
    nov10 = days[dt.date(2026, 11, 10)].overlaps
    assert [(o.shared, o.base, o.percent, o.flagged) for o in nov10] == [(5, 100, 5.0, False)]
    nov16 = days[dt.date(2026, 11, 16)].overlaps  # the digest has no audience: not compared
    assert [(o.first.campaign_id, o.second.run_id, o.shared, o.base, o.percent, o.flagged)
            for o in nov16] == [("weekly-newsletter", "fl-1", 10, 10, 100.0, True)]
    assert cal.flagged_days == [dt.date(2026, 11, 9), dt.date(2026, 11, 16)]
    # "Beyond the threshold" is strict: exactly 5 % is flagged only below 5.
    strict = calendar(register, days=7, overlap_threshold=4.9, now=NOW)
    assert strict.flagged_days == [dt.date(2026, 11, 9), dt.date(2026, 11, 10),
                                   dt.date(2026, 11, 16)]
    assert calendar(register, days=7, overlap_threshold=100.0, now=NOW).flagged_days == []


def test_days_in_another_time_zone(register: Engine) -> None:
    # In Tokyo (UTC+9) each pair above falls on either side of midnight.
    cal = calendar(register, days=7, overlap_threshold=4.9, now=NOW, tz="Asia/Tokyo")
    assert cal.flagged_days == []
    assert [e.run_id for d in cal.days if d.day == dt.date(2026, 11, 10) for e in d.entries] == [
        "wb-1", "ly-1"]


def test_wider_window(register: Engine) -> None:
    cal = calendar(register, days=14, now=NOW)
    weekly = [f"{e.at:%m-%d %H:%M}" for d in cal.days for e in d.entries
              if e.campaign_id == "weekly-newsletter"]
    # nl-1 comes into the window; Thursday 26th at 14:00 UTC is after the end (12:00).
    assert weekly == ["11-02 14:05", "11-09 14:05", "11-12 14:00", "11-16 14:00",
                      "11-19 14:00", "11-23 14:00"]
    assert [e.run_id for e in cal.days[0].entries] == ["nl-1"]


def test_render(register: Engine) -> None:
    text = render_calendar_text(calendar(register, days=7, overlap_threshold=5.0, now=NOW))
    lines = text.splitlines()
    assert lines[0] == ("Campaign calendar 2026-11-05 .. 2026-11-19 (UTC), now 2026-11-12 12:00; "
                        "overlaps above 5% of the smaller audience are flagged")
    assert "2026-11-09 Mon  !! OVERLAP" in lines
    assert "2026-11-10 Tue" in lines
    assert ("  !! overlap weekly-newsletter x spring-winback: 5 people in both = 50% of the "
            "smaller audience (10)") in lines
    assert "     overlap loyalty x promo: 5 people in both = 5% of the smaller audience (100)" in lines
    assert ("  !! overlap weekly-newsletter x flash-sale: 10 people in both = 100% of the "
            "smaller audience (10) (estimated)") in lines
    assert ("  14:00  scheduled  weekly-newsletter  ~11 recipients (estimate from run nl-2); "
            "cron 0 9 * * MON,THU America/New_York") in lines
    assert ("  07:30  scheduled  daily-digest       no earlier run to estimate from; "
            "cron 30 7 * * * UTC") in lines
    assert "  15:00  pending    flash-sale         40 recipients; run fl-1 (awaiting_approval)" in lines
    assert lines[-1] == "2 day(s) flagged: 2026-11-09, 2026-11-16"


def test_table_rows_and_markdown(register: Engine) -> None:
    cal = calendar(register, days=7, overlap_threshold=5.0, now=NOW)
    rows = calendar_table_rows(cal)
    json.dumps(rows)  # a table artifact takes plain JSON values
    assert len(rows) == 16
    nov16 = [r for r in rows if r["day"] == "2026-11-16 Mon"]
    assert nov16 == [
        {"day": "2026-11-16 Mon", "time": "07:30", "kind": SCHEDULED, "campaign": "daily-digest",
         "run": "-", "recipients": "-", "max overlap %": "-", "flagged": ""},
        {"day": "2026-11-16 Mon", "time": "14:00", "kind": SCHEDULED,
         "campaign": "weekly-newsletter", "run": "nl-2", "recipients": "~11",
         "max overlap %": 100.0, "flagged": "yes"},
        {"day": "2026-11-16 Mon", "time": "15:00", "kind": PENDING, "campaign": "flash-sale",
         "run": "fl-1", "recipients": 40, "max overlap %": 100.0, "flagged": "yes"},
    ]
    ly = next(r for r in rows if r["run"] == "ly-1")
    assert (ly["max overlap %"], ly["flagged"]) == (5.0, "")
    md = render_calendar_markdown(cal).splitlines()
    assert md[4] == "| day | time | kind | campaign | run | recipients | max overlap % | flagged |"
    assert md[-2:] == [
        "- 2026-11-09: weekly-newsletter x spring-winback, 5 people in both = 50% of 10",
        "- 2026-11-16: weekly-newsletter x flash-sale, 10 people in both = 100% of 10 (estimated)",
    ]


def test_occurrences_follow_the_time_zone() -> None:
    # 09:00 in New York is 13:00 UTC before the clocks go back (Nov 1 2026) and 14:00 after.
    got = occurrences("0 9 * * *", "America/New_York", D(2026, 10, 30, 0, 0), D(2026, 11, 2, 0, 0))
    assert got == [D(2026, 10, 30, 13, 0), D(2026, 10, 31, 13, 0), D(2026, 11, 1, 14, 0)]
    assert occurrences("not a cron", "UTC", NOW, NOW + dt.timedelta(days=1)) == []


def test_empty(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrations.upgrade(engine)
    cal = calendar(engine, now=NOW)
    assert cal.days == [] and cal.flagged_days == []
    assert render_calendar_text(cal).splitlines()[-1] == "No sends in this window."


# -- overlaps: counted right, on both databases, with work that grows with the rows -------
def sent_on(engine: Engine, day: dt.date, audiences: Mapping[str, Iterable[int]],
            hour: int = 9) -> None:
    """One sent run per campaign on `day` (run id = campaign id), with its 'send' rows."""
    for i, (campaign, ids) in enumerate(audiences.items()):
        at = dt.datetime.combine(day, dt.time(hour + i % 12, i // 12))
        add_run(engine, campaign, campaign, rs.SENT, created=at, updated=at, send=sorted(ids))


def python_overlaps(audiences: dict[str, set[int]]) -> dict[tuple[str, str], int]:
    """The independent count: set intersections in Python."""
    return {(a, b): len(audiences[a] & audiences[b]) for a, b in combinations(sorted(audiences), 2)}


def calendar_overlaps(cal: Calendar) -> dict[tuple[str, str], int]:
    return {(min(o.first.run_id, o.second.run_id), max(o.first.run_id, o.second.run_id)): o.shared
            for d in cal.days for o in d.overlaps}


@pytest.mark.parametrize("seed", [1, 2])
def test_overlaps_match_an_independent_count(db_url: str, seed: int) -> None:
    rng = random.Random(seed)
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    days = {dt.date(2026, 11, 10): 6, dt.date(2026, 11, 11): 3}
    expected: dict[tuple[str, str], int] = {}
    everyone: dict[str, set[int]] = {}
    for day, n in days.items():
        auds = {f"c{day:%d}-{i}": set(rng.sample(range(400), rng.randint(0, 150))) for i in range(n)}
        sent_on(engine, day, auds)
        expected |= python_overlaps(auds)  # the calendar compares sends of the same day
        everyone |= auds
    # Rows that are no one's 'send' must not count: control and excluded rows of the same
    # customers in the first run, and seeds (no customer id).
    with engine.begin() as conn:
        conn.execute(sa.insert(audience), [
            {"run_id": "c10-0", "customer_id": c, "email": f"x{c}@example.com", "address_key": "k",
             "outcome": o, "is_seed": o == "seed"}
            for c, o in ((c, o) for c in range(400, 450) for o in ("control", "excluded"))
        ] + [{"run_id": r, "customer_id": None, "email": "seed@example.com",
              "address_key": "seed@example.com", "outcome": "seed", "is_seed": True}
             for r in ("c10-0", "c10-1")])
    cal = calendar(engine, days=7, overlap_threshold=5.0, now=NOW)
    assert calendar_overlaps(cal) == expected
    with engine.connect() as conn:  # any set of runs, in one pass
        assert overlap_counts(conn, everyone) == {
            k: v for k, v in python_overlaps(everyone).items() if v}
    engine.dispose()


def test_a_customer_twice_in_one_run_counts_once(db_url: str) -> None:
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    sent_on(engine, dt.date(2026, 11, 10), {"aa": range(0, 60), "bb": range(40, 100), "cc": range(50, 55)})
    with engine.begin() as conn:  # 45 of "aa" and 50 of "bb" have their row twice
        conn.execute(sa.insert(audience), [
            {"run_id": r, "customer_id": c, "email": f"p{c}@example.com",
             "address_key": f"p{c}@example.com", "outcome": "send", "is_seed": False}
            for r, c in [("aa", 45), ("bb", 50), ("bb", 50)]
        ])
        sizes = {str(r): int(n) for r, n in conn.execute(
            sa.select(audience.c.run_id, sa.func.count(sa.distinct(audience.c.customer_id)))
            .where(audience.c.outcome == "send").group_by(audience.c.run_id))}
    cal = calendar(engine, days=7, now=NOW)
    assert calendar_overlaps(cal) == {("aa", "bb"): 20, ("aa", "cc"): 5, ("bb", "cc"): 5}
    assert {e.run_id: e.audience for d in cal.days for e in d.entries} == sizes == {
        "aa": 60, "bb": 60, "cc": 5}
    with engine.connect() as conn:
        assert shared_recipients(conn, "bb", "aa") == 20
        assert shared_recipients(conn, "aa", "aa") == 60
        assert shared_recipients(conn, "aa", "nobody") == 0
    engine.dispose()


def test_more_runs_in_a_day_than_one_pass_holds(db_url: str) -> None:
    """40 campaigns on one day: more than the 31 runs one pass counts, every pair still right."""
    rng = random.Random(7)
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    auds = {f"m{i:02d}": set(rng.sample(range(120), 12)) for i in range(40)}
    sent_on(engine, dt.date(2026, 11, 10), auds)
    assert calendar_overlaps(calendar(engine, days=7, now=NOW)) == python_overlaps(auds)
    engine.dispose()


def audience_statements(engine: Engine, cal_days: int) -> list[tuple[str, Any]]:
    """Every statement on co_audience that calendar() runs (SQL, parameters)."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                executemany: bool) -> None:
        if "co_audience" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        calendar(engine, days=cal_days, now=NOW)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def test_overlaps_take_one_aggregate_pass_per_day_and_no_join(db_url: str) -> None:
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    sent_on(engine, dt.date(2026, 11, 9), {"a1": range(0, 50), "b1": range(25, 75), "c1": range(70, 80)})
    sent_on(engine, dt.date(2026, 11, 10), {"a2": range(0, 30), "b2": range(10, 40)})
    seen = audience_statements(engine, 7)
    assert len(calendar_overlaps(calendar(engine, days=7, now=NOW))) == 4
    # The audience sizes, then one pass for each day with overlaps to count.
    assert len(seen) == 3, [s for s, _ in seen]
    with engine.connect() as conn:
        for statement, params in seen:
            assert "JOIN" not in statement.upper()
            if engine.dialect.name == "postgresql":
                text = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
                assert "Nested Loop" not in text and "Join" not in text, text
            else:
                steps = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
                assert sum("co_audience" in step for step in steps) == 1, steps
    engine.dispose()


def test_overlap_work_grows_with_the_rows_not_their_product(sqlite_url: str) -> None:
    """SQLite's VM steps for the calendar, bounded per audience row (a pairwise join on the
    run_id index needs n*m: 18,000 steps a row at 2 x 4,000, and is cut off at the bound)."""
    budget_per_row = 200  # measured: ~54 with one aggregate pass a day
    used: list[int] = []
    for n in (2000, 4000):
        engine = make_engine(sqlite_url.replace(".db", f"-{n}.db"))
        migrations.upgrade(engine)
        sent_on(engine, dt.date(2026, 11, 10), {"big-a": range(n), "big-b": range(n // 2, n + n // 2)})
        limit = budget_per_row * 2 * n
        steps = [0]

        def tick(steps: list[int] = steps, limit: int = limit) -> int:
            steps[0] += 100
            return 1 if steps[0] > limit else 0  # non-zero interrupts the statement

        @event.listens_for(engine, "connect")
        def on_connect(dbapi: sqlite3.Connection, record: Any, tick: Any = tick) -> None:
            dbapi.set_progress_handler(tick, 100)

        engine.dispose()
        try:
            cal = calendar(engine, days=7, now=NOW)
        except sa.exc.OperationalError as exc:
            assert getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT
            pytest.fail(f"the calendar took more than {budget_per_row} SQLite steps per row "
                        f"at 2 x {n:,} rows")
        assert calendar_overlaps(cal) == {("big-a", "big-b"): n // 2}
        used.append(steps[0])
        engine.dispose()
    assert used[1] < 2.5 * used[0], used  # doubling the rows about doubles the work


def test_bench_calendar_materialises_a_week_and_agrees_with_the_join(sqlite_url: str) -> None:
    """The benchmark's week on a small warehouse: its overlap counts are the join's."""
    from campaignops.bench import calendar as bench
    from campaignops.synthetic import init_warehouse

    engine = make_engine(sqlite_url)
    init_warehouse(engine, customers=20_000, seed=42, as_of=bench.NOW, replace=True)
    migrations.upgrade(engine)
    made = bench.child_materialise({"url": sqlite_url})
    assert len(made["recipients"]) == len(bench.WEEK)
    week = bench.child_calendar({"url": sqlite_url, "days": 7})["value"]
    day = bench.child_calendar({"url": sqlite_url, "days": 1})["value"]
    join = bench.child_pairwise({"url": sqlite_url, "cap": 60})
    assert join["finished"] and week["big_pair"][0] == join["value"] > 0
    assert week["entries"] == len(bench.WEEK) and week["pairs"] == 6 * 6 + 10
    row = {"db": "sqlite", "customers": 20_000, "materialise": made, "pairwise": join,
           "calendar": {"value": week, "seconds": 1.0, "rss_mb": 1.0, "all_seconds": [1.0]},
           "calendar_1": {"value": day, "seconds": 1.0, "all_seconds": [1.0]}}
    assert bench._check(row) == []
    counted = bench.child_count_floor({"url": sqlite_url})["value"]
    assert counted == sum(made["recipients"].values())
    engine.dispose()
