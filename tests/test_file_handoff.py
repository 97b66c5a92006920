"""File-drop handoff (CAMPAIGNOPS_HANDOFF_MODE=file): a CSV + manifest written in staging,
checked by the handoff_file suite, reconciled with the approved audience and released; on a
real warehouse copy, driven step by step (no flow), with the ESP sandbox proving nothing went
over HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from campaignops import audit, runs
from campaignops.cli import main
from campaignops.errors import CampaignOpsError, HandoffError
from campaignops.handoff import file as drop_module
from campaignops.handoff.batches import count_recipients
from campaignops.schema import audience, contact_history
from campaignops.settings import load_settings
from tasks.markdown import handoff_markdown
from tests.conftest import TOKEN
from tests.flowkit import WINBACK, approved_run, hand_off, record_history

CAMPAIGN = "winback-lapsed-customers"


def personal_values(engine: sa.Engine, run_id: str) -> set[str]:
    """Addresses and names of the run's audience (what must never leave the warehouse)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audience.c.email, audience.c.first_name, audience.c.last_name)
                            .where(audience.c.run_id == run_id)).all()
    return {v for r in rows for v in r if v and len(v) > 3}


def history_rows(engine: sa.Engine, run_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(contact_history)
                                .where(contact_history.c.run_id == run_id)).scalar_one())


def actions(engine: sa.Engine, run_id: str) -> list[tuple[str, str]]:
    return [(r.step, r.action) for r in audit.trail(engine, run_id)]


# -- file-drop mode -----------------------------------------------------------------------

@pytest.fixture
def file_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """File mode into a drop folder of the test's own; no ESP token anywhere."""
    drops = tmp_path / "drops"
    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "file")
    monkeypatch.setenv("CAMPAIGNOPS_FILE_DROP_DIR", str(drops))
    return drops


def released_files(drops: Path) -> list[str]:
    """What an ESP importer would see in the drop folder (hidden staging left aside)."""
    return sorted(p.name for p in drops.iterdir() if not p.name.startswith(".")) if drops.exists() else []


@pytest.mark.flow
def test_file_mode_releases_a_checked_drop_and_a_rerun_changes_nothing(
        handoff_env: dict[str, Any], file_mode: Path) -> None:
    engine, sandbox = handoff_env["engine"], handoff_env["sandbox"]
    run_id, qa_digest = approved_run(handoff_env["keys"])
    result = hand_off(run_id)
    approved = count_recipients(engine, run_id)
    csv_path, manifest_path = file_mode / f"{run_id}.csv", file_mode / f"{run_id}.manifest.json"
    assert released_files(file_mode) == sorted([csv_path.name, manifest_path.name])
    assert not any((file_mode / drop_module.STAGING_DIR).iterdir())  # nothing left in staging
    manifest = json.loads(manifest_path.read_text())
    data = csv_path.read_bytes()
    assert manifest["rows"] == approved == data.count(b"\n") - 1
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == result.sha256
    assert result.mode == "file" and result.released is True
    assert (result.approved, result.rows, result.reconciled) == (approved, approved, True)
    assert result.qa_passed and result.csv_path == csv_path
    assert sandbox.deliveries(CAMPAIGN, run_id) == {}  # nothing went over HTTP
    # contact history afterwards, as for HTTP: one row per treated customer
    seeds = sum(1 for line in data.splitlines()[1:] if line.split(b",")[4] == b"true")
    assert record_history(run_id) == approved - seeds == history_rows(engine, run_id)
    assert runs.get_run(engine, run_id).status == runs.SENT
    (record,) = [r for r in audit.trail(engine, run_id) if r.action == "file_written"]
    assert record.step == "handoff"
    assert {k: record.details[k] for k in ("files", "rows", "sha256", "released")} == {
        "files": {"csv": csv_path.name, "manifest": manifest_path.name}, "rows": approved,
        "sha256": manifest["sha256"], "released": True}
    shown = CliRunner().invoke(main, ["audit", "show", run_id])
    assert f"rows={approved}, sha256={manifest['sha256']}" in shown.output
    # no addresses or names in the audit trail, the result or the artifact; no folder in the audit
    trail = json.dumps([r.details for r in audit.trail(engine, run_id)])
    assert str(file_mode) not in trail
    for value in personal_values(engine, run_id):
        for text in (trail, json.dumps(dataclasses.asdict(result), default=str), handoff_markdown(result)):
            assert value not in text

    # A rerun (task retry, flow rerun) rebuilds byte-identical files and releases nothing new.
    released_at = csv_path.stat().st_mtime_ns
    again = hand_off(run_id)
    assert again.sha256 == result.sha256
    assert again.released is False and csv_path.read_bytes() == data
    assert csv_path.stat().st_mtime_ns == released_at
    assert ("handoff", "file_unchanged") in actions(engine, run_id)
    assert record_history(run_id) == 0  # written once
    # and write_file_drop itself is deterministic: same run, same bytes
    other = drop_module.write_file_drop(engine, run_id, file_mode / "again", ["first_name"])
    assert other.csv_path.read_bytes() == data and other.sha256 == manifest["sha256"]
    # the released run cannot be sent again over HTTP
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAMPAIGNOPS_HANDOFF_MODE", "http")
        mp.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
        with pytest.raises(HandoffError, match="already handed off as file"):
            hand_off(run_id)
    assert sandbox.deliveries(CAMPAIGN, run_id) == {}


def _after_write(monkeypatch: pytest.MonkeyPatch, change: Callable[[drop_module.FileDrop], None]) -> None:
    """Make write_file_drop (as the handoff step calls it) do `change` once it wrote the files."""
    real = drop_module.write_file_drop

    def write_then_change(*args: Any, **kwargs: Any) -> drop_module.FileDrop:
        drop = real(*args, **kwargs)
        change(drop)
        return drop

    monkeypatch.setattr(drop_module, "write_file_drop", write_then_change)


def _assert_failed_and_nothing_released(engine: sa.Engine, run_id: str, drops: Path) -> None:
    assert runs.get_run(engine, run_id).status == runs.FAILED
    assert released_files(drops) == []
    assert not any((drops / drop_module.STAGING_DIR).iterdir())
    assert not any(a == "file_written" for _, a in actions(engine, run_id))
    assert history_rows(engine, run_id) == 0


@pytest.mark.flow
def test_an_altered_file_fails_the_suite_and_nothing_is_released(
        handoff_env: dict[str, Any], file_mode: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = handoff_env["engine"]
    run_id, qa_digest = approved_run(handoff_env["keys"])

    def append_a_row(drop: drop_module.FileDrop) -> None:
        with drop.csv_path.open("a") as f:
            f.write("999999999,intruder@example.org,ten_off,WELCOME10,false,Eve\n")

    _after_write(monkeypatch, append_a_row)
    with pytest.raises(HandoffError) as err:
        hand_off(run_id)
    message = str(err.value)
    assert "failed QA" in message and "nothing was released" in message and "\n" not in message
    assert "row_count_matches_manifest" in message and "sha256_matches_manifest" in message
    assert "intruder@example.org" not in message
    _assert_failed_and_nothing_released(engine, run_id, file_mode)
    (record,) = [r for r in audit.trail(engine, run_id) if r.action == "file_qa_failed"]
    assert set(record.details["qa"]["failed_critical"]) >= {"row_count_matches_manifest",
                                                            "sha256_matches_manifest"}


@pytest.mark.flow
def test_a_file_that_does_not_reconcile_is_a_mismatch(
        handoff_env: dict[str, Any], file_mode: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = handoff_env["engine"]
    run_id, qa_digest = approved_run(handoff_env["keys"])

    def one_row_short(drop: drop_module.FileDrop) -> None:  # a consistent file, one recipient short
        lines = drop.csv_path.read_bytes().splitlines(keepends=True)[:-1]
        drop.csv_path.write_bytes(b"".join(lines))
        manifest = json.loads(drop.manifest_path.read_text())
        manifest.update(rows=len(lines) - 1, sha256=hashlib.sha256(b"".join(lines)).hexdigest())
        drop.manifest_path.write_text(json.dumps(manifest))

    _after_write(monkeypatch, one_row_short)
    with pytest.raises(HandoffError, match="handoff mismatch") as err:
        hand_off(run_id)
    assert "nothing was released" in str(err.value)
    _assert_failed_and_nothing_released(engine, run_id, file_mode)
    (record,) = [r for r in audit.trail(engine, run_id) if r.action == "mismatch"]
    rec = record.details["reconciliation"]
    assert rec["approved"] == rec["rows"] + 1 and not rec["matches"]


@pytest.mark.flow
def test_the_audience_edited_after_staging_changes_nothing_released(
        handoff_env: dict[str, Any], file_mode: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drop is written from the approved outbox, not a second read of co_audience."""
    engine = handoff_env["engine"]
    run_id, qa_digest = approved_run(handoff_env["keys"])

    def audience_grows(drop: drop_module.FileDrop) -> None:
        with engine.begin() as conn:
            conn.execute(audience.insert().values(
                run_id=run_id, customer_id=None, email="late@proof.example",
                address_key="late@proof.example", outcome="seed", is_seed=True))
            conn.execute(sa.update(audience).where(audience.c.run_id == run_id,
                                                   audience.c.outcome == "send")
                         .values(email="attacker@evil.example"))

    _after_write(monkeypatch, audience_grows)
    result = hand_off(run_id)
    data = (file_mode / f"{run_id}.csv").read_bytes()
    assert result.released and result.reconciled
    assert b"late@proof.example" not in data and b"attacker@evil.example" not in data
    assert record_history(run_id) > 1000
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT COUNT(*) FROM co_deliveries WHERE run_id = :r AND "
                                    "address_key = 'attacker@evil.example'"), {"r": run_id}).scalar_one()
    assert kept == 0  # the delivery record says what was released, not the edited table


@pytest.mark.unit
def test_a_bad_handoff_mode_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "ftp")
    with pytest.raises(CampaignOpsError) as err:
        load_settings()
    message = str(err.value)
    assert "\n" not in message
    assert "CAMPAIGNOPS_HANDOFF_MODE" in message and "'http' or 'file'" in message
    result = CliRunner().invoke(main, ["approvals"])
    assert result.exit_code == 1 and "CAMPAIGNOPS_HANDOFF_MODE" in result.output
    assert "Traceback" not in result.output
    monkeypatch.delenv("CAMPAIGNOPS_HANDOFF_MODE")
    flag = CliRunner().invoke(main, ["run", str(WINBACK), "--handoff", "ftp"])
    assert flag.exit_code == 2 and "'http', 'file'" in flag.output


@pytest.mark.unit
def test_file_drop_dir_defaults_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_HOME", str(tmp_path / "h"))
    assert load_settings().resolved_file_drop_dir == (tmp_path / "h" / "drops").resolve()
    assert load_settings().handoff_mode == "http"


@pytest.mark.unit
def test_run_handoff_flag_overrides_the_setting_and_prints_the_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    import campaignops.cli.run as cli_run
    from campaignops.handoff.file import FileHandoff
    from campaignops.intake import Intake
    from campaignops.segmentation import Waterfall
    from flows.campaign import RunOutcome

    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "http")  # restored after the test
    seen: dict[str, Any] = {}

    def fake_flow(settings: Any, brief_path: Path, mode: str) -> RunOutcome:
        seen["mode"] = settings.handoff_mode
        waterfall = Waterfall(run_id="r", campaign_id="c", matched=3, eligible=3, control=0,
                              cells={"a": 2}, seeds=1, recipients=3)
        handoff = FileHandoff(run_id="r", csv_path=Path("/drops/r.csv"),
                              manifest_path=Path("/drops/r.manifest.json"), rows=3, sha256="ab" * 32,
                              released=True, approved=3, qa_passed=True, qa_checks=9, seconds=0.1)
        intake = Intake("r", "c", "d" * 64, ("a",), (), ("qa",), dt.datetime(2027, 1, 1), "full")
        return RunOutcome("r", intake, waterfall, None, handoff, 2)

    monkeypatch.setattr(cli_run, "run_flow", fake_flow)
    result = CliRunner().invoke(main, ["run", str(WINBACK), "--handoff", "file"])
    assert result.exit_code == 0, result.output
    assert seen["mode"] == "file"
    assert "handoff: file /drops/r.csv (3 rows, sha256 abab" in result.output
    assert "reconciled: yes" in result.output
