"""Process KPIs on a history of runs built row by row, with a clock we control."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from campaignops import audit, migrations
from campaignops import runs as rs
from campaignops.brief import Brief
from campaignops.kpis import (
    CampaignKpi,
    RunKpi,
    campaign_kpis,
    fmt_duration,
    kpi_table_rows,
    run_kpis,
    run_table_rows,
)
from campaignops.schema import runs
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit

BRIEFS = Path(__file__).resolve().parents[1] / "examples" / "briefs"
T0 = dt.datetime(2026, 11, 2, 8, 0)
T1, T2, T3 = T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=3)
T4, T5, T6 = T0 + dt.timedelta(days=4), T0 + dt.timedelta(days=5), T0 + dt.timedelta(days=6)
T7, T8 = T0 + dt.timedelta(days=7), T0 + dt.timedelta(days=8)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)


def brief_json(campaign_id: str, *, send_at: dt.datetime | None = None,
               schedule: dict[str, str] | None = None,
               stages: tuple[str, ...] = ("business",)) -> str:
    """A real, valid brief as register_run stores it."""
    data = yaml.safe_load((BRIEFS / "winback.yaml").read_text(encoding="utf-8"))
    data.update(
        campaign_id=campaign_id,
        send_at=send_at.replace(tzinfo=dt.UTC).isoformat() if send_at else None,
        approvals=[{"stage": s, "approvers": [f"{s}.approver@example.com"]} for s in stages],
    )
    if schedule is not None:
        data["schedule"] = schedule
    brief = Brief.model_validate(data)
    return json.dumps(brief.model_dump(mode="json"), sort_keys=True)


def insert_run(engine: Engine, run_id: str, campaign_id: str, status: str, created_at: dt.datetime,
               brief: str, source: str, *, recipients: int | None = None, dry_run: bool = False,
               waiting_stage: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(runs).values(
            run_id=run_id, campaign_id=campaign_id, brief_digest="0" * 64, brief_json=brief,
            brief_source=source, dry_run=dry_run, status=status, created_at=created_at,
            updated_at=created_at, as_of=created_at, recipients=recipients,
            waiting_stage=waiting_stage, waiting_since=None, contact_history_written=False,
        ))


class Clock:
    """Stands in for campaignops.audit's `dt`: datetime.now() answers the time we set."""

    def __init__(self) -> None:
        self.now = T0
        clock = self

        class FrozenDateTime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
                t = clock.now.replace(tzinfo=dt.UTC)
                return t.astimezone(tz) if tz is not None else clock.now

        self.module = SimpleNamespace(datetime=FrozenDateTime, UTC=dt.UTC, timedelta=dt.timedelta)


Event = tuple[dt.datetime, str | None, str, str, dict[str, Any]]


def ev(at: dt.datetime, run_id: str | None, step: str, action: str, **details: Any) -> Event:
    return (at, run_id, step, action, details)


def write_trail(engine: Engine, clock: Clock, events: list[Event]) -> None:
    """Append every event through audit.append, in time order, at its time."""
    for at, run_id, step, action, details in sorted(events, key=lambda e: e[0]):
        clock.now = at
        audit.append(engine, run_id=run_id, step=step, action=action, actor="campaignops",
                     details=details)


def passed_run(run_id: str, start: dt.datetime, stages: list[tuple[str, dt.timedelta, dt.timedelta]],
               handoff: dt.timedelta | None, history: dt.timedelta | None,
               warnings: tuple[str, ...] = ()) -> list[Event]:
    """accepted at start, segmentation +1m, QA passed +2m, then each stage (wait opens at
    +offset, decision at +decided), handoff reconciled, contact history written."""
    out = [
        ev(start, run_id, "intake", "accepted"),
        ev(start + M, run_id, "segmentation", "materialised"),
        ev(start + 2 * M, run_id, "qa", "passed", failed_critical=[], warnings=list(warnings)),
    ]
    for stage, opened, decided in stages:
        out.append(ev(start + opened, run_id, f"approval:{stage}", "waiting"))
        out.append(ev(start + decided, run_id, f"approval:{stage}", "approved", via="cli"))
    if handoff is not None:
        out.append(ev(start + handoff, run_id, "handoff", "reconciled"))
    if history is not None:
        out.append(ev(start + history, run_id, "contact_history", "written", rows=10))
    return out


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(audit, "dt", c.module)
    return c


@pytest.fixture
def history(db_url: str, clock: Clock) -> Iterator[Engine]:
    """Three campaigns, twelve runs, known to the second (see the assertions)."""
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    wb = "winback.yaml"
    two = ("business", "legal")
    # spring-winback: the brief bounced twice, then ran; bounced once more, then twice ran.
    insert_run(engine, "a1", "spring-winback", rs.SENT, T0 + 30 * M,
               brief_json("spring-winback", send_at=T0 + 4 * H, stages=two), wb, recipients=1000)
    insert_run(engine, "a2", "spring-winback", rs.QA_BLOCKED, T1,
               brief_json("spring-winback", send_at=T1 + 6 * H, stages=two), wb, recipients=900)
    insert_run(engine, "a3", "spring-winback", rs.SENT, T1 + H,
               brief_json("spring-winback", send_at=T1 + 2 * H, stages=two), wb, recipients=800)
    # weekly-newsletter: as soon as approved; standing approvals, an expiry, a rejection,
    # a dry run and one waiting now.
    nl = brief_json("weekly-newsletter",
                    schedule={"cron": "0 9 * * MON", "timezone": "America/New_York"})
    nls = "weekly-newsletter.yaml"
    insert_run(engine, "n1", "weekly-newsletter", rs.SENT, T2, nl, nls, recipients=500)
    insert_run(engine, "n2", "weekly-newsletter", rs.SENT, T3, nl, nls, recipients=510)
    insert_run(engine, "n3", "weekly-newsletter", rs.EXPIRED, T4, nl, nls, recipients=520)
    insert_run(engine, "n4", "weekly-newsletter", rs.REJECTED, T5, nl, nls, recipients=530)
    insert_run(engine, "n5", "weekly-newsletter", rs.COUNTED, T6, nl, nls, recipients=540,
               dry_run=True)
    insert_run(engine, "n6", "weekly-newsletter", rs.AWAITING, T7, nl, nls, recipients=550,
               waiting_stage="business")
    # flash-sale: the handoff guard refuses, the ESP mismatches, one is handing off now.
    fl = brief_json("flash-sale", send_at=T8 + 3 * H)
    insert_run(engine, "f1", "flash-sale", rs.FAILED, T8, fl, "flash.yaml", recipients=70)
    insert_run(engine, "f2", "flash-sale", rs.FAILED, T8 + H, fl, "flash.yaml", recipients=70)
    insert_run(engine, "f3", "flash-sale", rs.HANDING_OFF, T8 + 2 * H, fl, "flash.yaml",
               recipients=70)

    events: list[Event] = [
        ev(T0, "x1", "intake", "rejected", source=wb, problems=3),
        ev(T0 + 10 * M, "x2", "intake", "rejected", source=wb, problems=1),
        ev(T0 + 30 * M, "a1", "intake", "accepted"),
        ev(T0 + 32 * M, "a1", "segmentation", "materialised"),
        ev(T0 + 33 * M, "a1", "qa", "passed", failed_critical=[],
           warnings=["size_within_drift_of_recent_runs"]),
        ev(T0 + 34 * M, "a1", "approval:business", "waiting"),
        ev(T0 + 2 * H + 34 * M, "a1", "approval:business", "approved", via="ui"),
        ev(T0 + 2 * H + 35 * M, "a1", "approval:legal", "waiting"),
        ev(T0 + 3 * H + 5 * M, "a1", "approval:legal", "approved", via="cli"),
        ev(T0 + 3 * H + 10 * M, "a1", "handoff", "reconciled"),
        ev(T0 + 3 * H + 11 * M, "a1", "contact_history", "written", rows=1000),
        ev(T1 - 5 * M, "x3", "intake", "rejected", source=wb, problems=2),
        ev(T1, "a2", "intake", "accepted"),
        ev(T1 + M, "a2", "segmentation", "materialised"),
        ev(T1 + 2 * M, "a2", "qa", "blocked",
           failed_critical=["no_suppressed_addresses", "required_fields_present"],
           warnings=["size_within_drift_of_recent_runs"]),
        ev(T1 + H, "a3", "intake", "accepted"),
        ev(T1 + H + M, "a3", "segmentation", "materialised"),
        ev(T1 + H + 2 * M, "a3", "qa", "passed", failed_critical=[], warnings=[]),
        ev(T1 + H + 3 * M, "a3", "approval:business", "waiting"),
        ev(T1 + H + 5 * M, "a3", "approval:business", "refused", why="wrong key"),
        ev(T1 + H + 10 * M, "a3", "approval:business", "approved", via="cli"),
        ev(T1 + H + 11 * M, "a3", "approval:legal", "waiting"),
        ev(T1 + H + 20 * M, "a3", "approval:legal", "approved", via="cli"),
        ev(T1 + 2 * H + 30 * M, "a3", "handoff", "reconciled"),
        ev(T1 + 2 * H + 31 * M, "a3", "contact_history", "written", rows=800),
        # weekly-newsletter
        *passed_run("n1", T2, [("business", 3 * M, 48 * M)], 58 * M, 59 * M),
        ev(T3, "n2", "intake", "accepted"),
        ev(T3 + M, "n2", "segmentation", "materialised"),
        ev(T3 + 2 * M, "n2", "qa", "passed", failed_critical=[], warnings=[]),
        ev(T3 + 3 * M, "n2", "approval:business", "approved", via="standing", grant_id=1),
        ev(T3 + 2 * H + 33 * M, "n2", "handoff", "reconciled"),
        ev(T3 + 2 * H + 34 * M, "n2", "contact_history", "written", rows=510),
        ev(T4, "n3", "intake", "accepted"),
        ev(T4 + M, "n3", "segmentation", "materialised"),
        ev(T4 + 2 * M, "n3", "qa", "passed", failed_critical=[], warnings=[]),
        ev(T4 + 3 * M, "n3", "approval:business", "standing_bypassed", why="QA has warnings"),
        ev(T4 + 3 * M, "n3", "approval:business", "waiting"),
        ev(T4 + 24 * H + 3 * M, "n3", "approval:business", "expired"),
        ev(T5, "n4", "intake", "accepted"),
        ev(T5 + M, "n4", "segmentation", "materialised"),
        ev(T5 + 2 * M, "n4", "qa", "passed", failed_critical=[], warnings=[]),
        ev(T5 + 3 * M, "n4", "approval:business", "waiting"),
        ev(T5 + H + 3 * M, "n4", "approval:business", "rejected", via="ui"),
        ev(T6, "n5", "intake", "accepted"),
        ev(T6 + M, "n5", "segmentation", "materialised"),
        ev(T6 + 70 * dt.timedelta(seconds=1), "n5", "run", "counted"),
        ev(T7, "n6", "intake", "accepted"),
        ev(T7 + M, "n6", "segmentation", "materialised"),
        ev(T7 + 2 * M, "n6", "qa", "passed", failed_critical=[], warnings=[]),
        ev(T7 + 3 * M, "n6", "approval:business", "waiting"),
        # flash-sale
        *passed_run("f1", T8, [("business", 3 * M, 13 * M)], None, None),
        ev(T8 + 14 * M, "f1", "handoff", "refused", why="audience changed after approval"),
        ev(T8 + 14 * M, "f1", "run", "failed", why="handoff refused"),
        *passed_run("f2", T8 + H, [("business", 3 * M, 10 * M)], None, None),
        ev(T8 + H + 20 * M, "f2", "handoff", "mismatch"),
        ev(T8 + H + 20 * M, "f2", "run", "failed", why="mismatch"),
        *passed_run("f3", T8 + 2 * H, [("business", 3 * M, 5 * M)], None, None),
        # Bounces not (yet) followed by an acceptance count for no run.
        ev(T8 + 2 * H + 30 * M, "x4", "intake", "rejected", source="flash.yaml", problems=1),
        ev(T8 + 2 * H + 31 * M, "x5", "intake", "rejected", source="other.yaml", problems=4),
    ]
    write_trail(engine, clock, events)
    yield engine
    engine.dispose()


NOW = T8 + 2 * H + 10 * M  # f3 is handing off, its send_at (T8 + 3h) not yet passed


def by_id(kpis: list[RunKpi]) -> dict[str, RunKpi]:
    return {k.run_id: k for k in kpis}


def test_run_kpis_exact(history: Engine) -> None:
    assert audit.verify(history).ok  # the trail was written through audit.append: chain intact
    ks = by_id(run_kpis(history, now=NOW))
    assert list(ks) == ["a1", "a2", "a3", "n1", "n2", "n3", "n4", "n5", "n6", "f1", "f2", "f3"]

    a1 = ks["a1"]
    assert a1.stage_seconds == {
        "segmentation": 120.0, "qa": 60.0, "approval:business": 7260.0,
        "approval:legal": 1860.0, "handoff": 300.0, "contact_history": 60.0,
    }
    assert list(a1.stage_seconds) == ["segmentation", "qa", "approval:business",
                                      "approval:legal", "handoff", "contact_history"]
    assert a1.approval_waits == {"business": 7200.0, "legal": 1800.0}
    assert a1.approval_outcomes == {"business": "approved", "legal": "approved"}
    assert a1.cycle_seconds == 9660.0  # 2h41m: accepted 08:30, contact history 11:11
    assert (a1.intake_rejections, a1.intake_rework_seconds) == (2, 1800.0)
    assert (a1.qa_blocked, a1.qa_failed_critical, a1.qa_warnings, a1.defects_caught) == (False, 0, 1, 1)
    assert a1.deadline == T0 + 4 * H and a1.handoff == "reconciled" and a1.on_time is True

    a2 = ks["a2"]
    assert (a2.intake_rejections, a2.intake_rework_seconds) == (1, 300.0)
    assert (a2.qa_blocked, a2.qa_failed_critical, a2.qa_warnings, a2.defects_caught) == (True, 2, 1, 3)
    assert a2.stage_seconds == {"segmentation": 60.0, "qa": 60.0}
    assert a2.cycle_seconds == 120.0 and a2.on_time is None

    a3 = ks["a3"]
    assert a3.intake_rejections == 0 and a3.intake_rework_seconds is None
    assert a3.approval_waits == {"business": 420.0, "legal": 540.0}
    assert a3.approval_refusals == 1
    assert a3.cycle_seconds == 5460.0
    assert a3.handoff_at == T1 + 2 * H + 30 * M and a3.deadline == T1 + 2 * H
    assert a3.on_time is False  # reconciled half an hour after send_at

    n1, n2 = ks["n1"], ks["n2"]
    assert n1.approval_waits == {"business": 2700.0}
    assert n1.deadline == T2 + 48 * M + 60 * M and n1.on_time is True
    assert n1.cycle_seconds == 3540.0
    assert n2.approval_outcomes == {"business": "standing"} and n2.approval_waits == {"business": 0.0}
    assert n2.stage_seconds["approval:business"] == 60.0
    assert n2.on_time is False  # handed off 2h30m after the (standing) approval: grace is 60 min

    n3, n4, n5, n6 = ks["n3"], ks["n4"], ks["n5"], ks["n6"]
    assert n3.approval_outcomes == {"business": "expired"} and n3.approval_waits == {"business": 86400.0}
    assert n3.cycle_seconds == 86580.0 and n3.on_time is None
    assert n4.approval_outcomes == {"business": "rejected"} and n4.approval_waits == {"business": 3600.0}
    assert n5.dry_run and n5.cycle_seconds == 70.0 and n5.stage_seconds == {"segmentation": 60.0}
    assert n6.open_wait == "business" and n6.cycle_seconds is None and n6.approval_waits == {}
    assert n6.on_time is None

    f1, f2, f3 = ks["f1"], ks["f2"], ks["f3"]
    assert f1.handoff == "refused" and f1.handoff_refused and f1.defects_caught == 1
    assert f1.on_time is False and f1.cycle_seconds == 840.0
    assert f2.handoff == "mismatch" and f2.defects_caught == 0 and f2.on_time is False
    assert f3.handoff is None and f3.on_time is None  # handing off, send_at not passed yet
    # x4 bounced after f3 was accepted: it belongs to a future acceptance, not to f3.
    assert f3.intake_rejections == 0


def test_campaign_kpis_exact(history: Engine) -> None:
    cs = {c.campaign_id: c for c in campaign_kpis(history, now=NOW)}
    assert list(cs) == ["flash-sale", "spring-winback", "weekly-newsletter"]
    assert cs["spring-winback"] == CampaignKpi(
        campaign_id="spring-winback", runs=3, sent=2, recipients_sent=1800, blocked_by_qa=1,
        rejected=0, expired=0, failed=0, dry_runs=0, in_progress=0, intake_rejections=3,
        defects_caught=4, median_cycle_seconds=7560.0, median_approval_wait_seconds=1170.0,
        median_stage_seconds={"segmentation": 60.0, "qa": 60.0, "approval:business": 3870.0,
                              "approval:legal": 1230.0, "handoff": 2250.0,
                              "contact_history": 60.0},
        on_time=1, due=2,
    )
    wk = cs["weekly-newsletter"]
    assert (wk.runs, wk.sent, wk.recipients_sent, wk.rejected, wk.expired, wk.dry_runs,
            wk.in_progress) == (6, 2, 1010, 1, 1, 1, 1)
    assert wk.median_cycle_seconds == 6390.0  # sent runs only: 59m and 2h34m
    assert wk.median_approval_wait_seconds == 3150.0  # 0 (standing), 45m, 1h, 24h
    assert (wk.on_time, wk.due, wk.on_time_share) == (1, 2, 0.5)
    fl = cs["flash-sale"]
    assert (fl.failed, fl.in_progress, fl.defects_caught, fl.intake_rejections) == (2, 1, 1, 0)
    assert (fl.on_time, fl.due) == (0, 2)
    assert fl.median_cycle_seconds is None


def test_deadline_passing_and_grace(history: Engine) -> None:
    later = by_id(run_kpis(history, now=T8 + 4 * H))
    assert later["f3"].on_time is False  # still not handed off an hour after send_at
    wide = by_id(run_kpis(history, now=NOW, asap_grace_minutes=180))
    assert wide["n2"].on_time is True and wide["n2"].deadline == T3 + 3 * M + 3 * H


def test_filters(history: Engine) -> None:
    assert [k.run_id for k in run_kpis(history, since=T2, now=NOW)] == [
        "n1", "n2", "n3", "n4", "n5", "n6", "f1", "f2", "f3"]
    # An aware `since` means the same instant.
    aware = T2.replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert len(run_kpis(history, since=aware, now=NOW)) == 9
    only = campaign_kpis(history, campaign_id="spring-winback", now=NOW)
    assert [c.campaign_id for c in only] == ["spring-winback"] and only[0].intake_rejections == 3
    # Back-and-forths before the window still belong to the runs inside it.
    late = run_kpis(history, since=T1, campaign_id="spring-winback", now=NOW)
    assert [(k.run_id, k.intake_rejections) for k in late] == [("a2", 1), ("a3", 0)]
    assert campaign_kpis(history, since=T8 + 10 * H, now=NOW) == []


def test_renderings(history: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    from campaignops.cli.operations import print_kpis

    per_run = run_kpis(history, now=NOW)
    cs = campaign_kpis(history, now=NOW, from_runs=per_run)
    assert cs == campaign_kpis(history, now=NOW)
    rows = kpi_table_rows(cs)
    assert rows[1] == {
        "campaign": "spring-winback", "runs": 3, "sent": 2, "recipients sent": 1800,
        "blocked by QA": 1, "rejected": 0, "expired": 0, "failed": 0, "back-and-forths": 3,
        "defects caught": 4, "median cycle": "2h 06m", "median approval wait": "19m 30s",
        "on time": "1/2 (50%)", "incidents (escaped QA)": 0, "median time to remediate": "-",
    }
    json.dumps(rows)  # a table artifact takes plain JSON values
    run_rows = {r["run"]: r for r in run_table_rows(per_run)}
    assert run_rows["a1"]["approvals"] == "2h 32m"
    assert run_rows["a1"]["approval waits"] == "business 2h 00m approved, legal 30m 00s approved"
    assert run_rows["n2"]["approval waits"] == "business standing"
    assert run_rows["n6"]["approval waits"] == "business waiting"
    assert run_rows["n6"]["on time"] == "-" and run_rows["a3"]["on time"] == "no"

    print_kpis(cs, per_run)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("campaign"))
    wb = next(line for line in lines if line.lstrip().startswith("spring-winback"))
    assert len(header) == len(wb)  # one table: aligned columns
    assert [c.strip() for c in wb.split("│")] == [
        "spring-winback", "3", "2", "1800", "1", "0", "0", "0", "3", "4", "2h 06m", "19m 30s",
        "1/2 (50%)", "0", "-"]
    assert "a1" in "\n".join(lines) and "business 2h 00m approved, legal 30m 00s approved" in "\n".join(lines)
    assert "within 60 min of the last approval" in "\n".join(lines)


def test_fmt_duration() -> None:
    assert [fmt_duration(s) for s in (None, 0, 59.6, 60, 3599, 3600, 86399, 90000)] == [
        "-", "0s", "1m 00s", "1m 00s", "59m 59s", "1h 00m", "23h 59m", "1d 01h"]


@pytest.mark.parametrize("action", ["file_written", "file_unchanged"])
def test_a_released_file_drop_is_an_on_time_handoff(sqlite_url: str, clock: Clock, action: str) -> None:
    """A file drop released before send_at (or released by an earlier attempt) is on time."""
    engine = make_engine(sqlite_url)
    migrations.upgrade(engine)
    insert_run(engine, "d1", "file-drop", rs.SENT, T0, brief_json("file-drop", send_at=T0 + 4 * H),
               "drop.yaml", recipients=100)
    events = [*passed_run("d1", T0, [("business", 3 * M, 10 * M)], None, 21 * M),
              ev(T0 + 20 * M, "d1", "handoff", action, rows=100, released=action == "file_written",
                 mode="file", reconciliation={"approved": 100, "rows": 100, "matches": True})]
    write_trail(engine, clock, events)
    (k,) = run_kpis(engine, now=T0 + H)
    assert k.handoff == "reconciled" and k.handoff_at == T0 + 20 * M
    assert k.on_time is True and k.stage_seconds["handoff"] == 600.0
    (c,) = campaign_kpis(engine, now=T0 + H)
    assert (c.on_time, c.due) == (1, 1)


def test_a_file_drop_that_failed_its_qa_is_not_on_time(sqlite_url: str, clock: Clock) -> None:
    """A file drop its own QA stopped is a handoff that did not happen: not on time."""
    engine = make_engine(sqlite_url)
    migrations.upgrade(engine)
    insert_run(engine, "d2", "file-drop", rs.FAILED, T0, brief_json("file-drop", send_at=T0 + 4 * H),
               "drop.yaml", recipients=100)
    write_trail(engine, clock, [*passed_run("d2", T0, [("business", 3 * M, 10 * M)], None, None),
                                ev(T0 + 20 * M, "d2", "handoff", "file_qa_failed", mode="file")])
    (k,) = run_kpis(engine, now=T0 + H)
    assert k.handoff == "file_qa_failed" and k.on_time is False
