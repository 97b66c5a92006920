"""Preflight before anyone is asked, and `campaignops resume RUN` after a failed handoff
that keeps its approvals while what was approved is unchanged (issue 21, point 2)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from campaignops import audit, runs
from campaignops.cli import main
from campaignops.errors import HandoffRefused, PreflightFailed
from campaignops.esp.sandbox import EspSandbox
from campaignops.handoff.batches import count_recipients
from campaignops.intake import accept_brief
from campaignops.preflight import check_handoff_ready
from campaignops.schema import audience
from campaignops.settings import load_settings
from tests.conftest import TOKEN
from tests.flowkit import WINBACK, FlowThread, approved_run, hand_off, warehouse

pytestmark = pytest.mark.flow
CAMPAIGN = "winback-lapsed-customers"


def registered(brief: Path = WINBACK) -> str:
    """A run that passed intake (all the preflight needs)."""
    run_id = str(uuid.uuid4())
    accept_brief(warehouse(), run_id, str(brief))
    return run_id


def preflight_line(run_id: str) -> str:
    """The preflight's one-line refusal for the settings in force."""
    with pytest.raises(PreflightFailed) as info:
        check_handoff_ready(warehouse(), load_settings(), run_id)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"preflight for run {run_id}: ")
    assert message.endswith("; no approver was asked, nothing was sent")
    assert info.value.exit_code == 10
    return message


def test_preflight_passes_with_a_reachable_esp_and_its_token(
        handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """All well: audited as passed, with the checks it made; nothing posted."""
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    run_id = registered()
    done = check_handoff_ready(warehouse(), load_settings(), run_id)
    assert done.checks == ("send_time", "esp_token", "esp_reachable")
    rec = audit.latest(handoff_env["engine"], run_id, "preflight")
    assert rec is not None and rec.action == "passed" and audit.genuine(rec)
    assert handoff_env["sandbox"].stats(run_id).get("requests", 0) == 0


def test_preflight_refuses_each_missing_need_in_one_line(
        handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token, a wrong token, an ESP that does not answer, a stale send_at, an unwritable drop."""
    run_id = registered()
    assert "CAMPAIGNOPS_ESP_TOKEN is not set" in preflight_line(run_id)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "wrong-token")
    assert "refused the token: check CAMPAIGNOPS_ESP_TOKEN" in preflight_line(run_id)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", "http://127.0.0.1:9")
    line = preflight_line(run_id)
    assert "the ESP at http://127.0.0.1:9 did not take the probe" in line and TOKEN not in line
    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "file")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CAMPAIGNOPS_FILE_DROP_DIR", str(blocker / "drops"))
    assert f"the drop folder {blocker / 'drops'} is not writable" in preflight_line(run_id)
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data["send_at"] = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = tmp_path / "soon.yaml"
    later.write_text(yaml.safe_dump(data), encoding="utf-8")
    stale = registered(later)
    with pytest.raises(PreflightFailed, match=r"send_at .* passed .* grace; set a future send_at"):
        check_handoff_ready(warehouse(), load_settings(), stale,
                            now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    failed = [r for r in audit.trail(handoff_env["engine"], run_id) if r.step == "preflight"]
    assert [r.details["check"] for r in failed] == [
        "esp_token", "esp_reachable", "esp_reachable", "drop_folder_writable"]


def test_a_run_without_a_token_fails_before_the_first_approval_wait(
        prefect_api: str, handoff_env: dict[str, Any]) -> None:
    """The flow stops after QA with the preflight's line: nobody was asked to approve."""
    result = FlowThread(WINBACK).result()
    assert isinstance(result, PreflightFailed) and "CAMPAIGNOPS_ESP_TOKEN is not set" in str(result)
    engine = handoff_env["engine"]
    with engine.connect() as conn:
        run_id = conn.execute(sa.text("SELECT run_id FROM co_runs")).scalar_one()
    trail = audit.trail(engine, run_id)
    assert [r.step for r in trail if r.step.startswith(("qa", "preflight", "approval"))] == [
        "qa", "preflight"]
    assert runs.get_run(engine, run_id).status == runs.FAILED


def _failed_after_approvals(env: dict[str, Any]) -> str:
    """Approved by both stages, then the handoff failed (no token): status failed."""
    run_id, _ = approved_run(env["keys"])
    with pytest.raises(HandoffRefused, match="CAMPAIGNOPS_ESP_TOKEN is not set"):
        hand_off(run_id)
    runs.record_failure(env["engine"], run_id, runs.FAILED, "no token")
    return run_id


def test_resume_sends_a_failed_run_with_its_approvals_once(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The token fixed, `resume` sends without asking again, audited; a second resume refuses."""
    engine, sandbox = handoff_env["engine"], handoff_env["sandbox"]
    run_id = _failed_after_approvals(handoff_env)
    decisions = [r.n for r in audit.trail(engine, run_id) if r.step.startswith("approval:")]
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    result = CliRunner().invoke(main, ["resume", run_id])
    assert result.exit_code == 0, result.output
    assert f"run {run_id} resumed with its approvals" in result.output
    assert "reconciled: yes" in result.output
    delivered = sandbox.deliveries(CAMPAIGN, run_id)
    assert len(delivered) == count_recipients(engine, run_id) and set(delivered.values()) == {1}
    assert runs.get_run(engine, run_id).status == runs.SENT
    trail = audit.trail(engine, run_id)
    assert [r.n for r in trail if r.step.startswith("approval:")] == decisions  # nobody asked again
    resumed = next(r for r in trail if r.step == "run" and r.action == "resumed")
    assert audit.genuine(resumed) and resumed.details["approvals_reused"] == 2
    assert resumed.details["after"] == "no token" and resumed.details["previous_status"] == "failed"
    assert audit.verify(engine, load_settings().resolved_anchor_file).ok
    again = CliRunner().invoke(main, ["resume", run_id])
    assert again.exit_code == 7 and "already sent: nothing to resume" in again.output
    assert "Traceback" not in again.output


def test_resume_refuses_when_what_was_approved_changed(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """An audience edited after approval: refused in one line, audited, nothing sent."""
    engine, sandbox = handoff_env["engine"], handoff_env["sandbox"]
    run_id = _failed_after_approvals(handoff_env)
    with engine.begin() as conn:
        row = conn.execute(sa.select(audience.c.row_id).where(
            audience.c.run_id == run_id, audience.c.outcome == "send").limit(1)).scalar_one()
        conn.execute(sa.update(audience).where(audience.c.row_id == row).values(outcome="control"))
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    result = CliRunner().invoke(main, ["resume", run_id])
    assert result.exit_code == 7, result.output
    assert result.output.strip().count("\n") == 0 and "differs from what was approved" in result.output
    assert sandbox.deliveries(CAMPAIGN, run_id) == {}
    assert runs.get_run(engine, run_id).status == runs.FAILED
    assert audit.latest(engine, run_id, "run", ("resume_refused",)) is not None


def test_resume_refuses_a_run_that_was_never_approved(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run not failed after approvals (here: only registered) is not resumed, and not failed."""
    run_id = registered()
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    result = CliRunner().invoke(main, ["resume", run_id])
    assert result.exit_code == 7 and "is intake, not a run that failed after its approvals" in result.output
    assert runs.get_run(handoff_env["engine"], run_id).status == runs.INTAKE
    unknown = CliRunner().invoke(main, ["resume", "no-such-run"])
    assert unknown.exit_code == 1 and "no run no-such-run" in unknown.output


def test_sandbox_is_untouched_by_the_preflight_probe(sandbox: EspSandbox) -> None:
    """The probe is a GET of the run summary: it posts nothing and counts as no request."""
    from campaignops.esp.client import EspClient

    with EspClient(sandbox.url, TOKEN, max_attempts=1) as client:
        assert client.run_summary(CAMPAIGN, "r-probe") == {"batches": 0, "accepted": 0, "rejected": 0}
    assert sandbox.stats("r-probe").get("requests", 0) == 0
