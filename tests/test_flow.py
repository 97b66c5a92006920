"""The campaign flow end to end under the Prefect test harness, with a real SQLite
warehouse and the ESP sandbox on loopback: good paths and bad paths."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops import audit, runs
from campaignops.approvers import add_approver
from campaignops.errors import (
    ApprovalRejected,
    BriefError,
    CampaignOpsError,
    HandoffError,
    QAFailed,
    WarehouseError,
)
from campaignops.esp.sandbox import EspSandbox
from campaignops.handoff.file import FileHandoff
from campaignops.handoff.http import HttpHandoff
from campaignops.resume import submit_decision
from campaignops.schema import audience, contact_history, holdout_contacts
from campaignops.settings import load_settings
from flows.campaign import RunOutcome
from tests.conftest import TOKEN
from tests.flowkit import FlowThread, wait_for_stage

pytestmark = pytest.mark.flow
ROOT = Path(__file__).resolve().parents[1]
WINBACK = ROOT / "examples" / "briefs" / "winback.yaml"

QA_APPROVER, BUSINESS_APPROVER = "quinn.qa@example.com", "blake.director@example.com"


@pytest.fixture
def env(prefect_api: str, warehouse_template: Path, sandbox: EspSandbox, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh warehouse copy, the sandbox, and approvers with known keys."""
    wh = tmp_path / "warehouse.db"
    shutil.copy(warehouse_template, wh)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", f"sqlite:///{wh}")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    from tests.flowkit import warehouse

    engine = warehouse().engine
    names = (QA_APPROVER, BUSINESS_APPROVER, "pat.platform.lead@example.com", "mallory@example.com")
    keys = {n: add_approver(engine, n) for n in names}
    return {"engine": engine, "keys": keys, "sandbox": sandbox, "tmp": tmp_path}


def decide(env: dict[str, Any], run_id: str, name: str, decision: str = "approve", reason: str = "",
           key: str | None = None) -> str:
    return submit_decision(load_settings(), run_id, name, None, decision, reason,
                           key if key is not None else env["keys"][name], via="test")


def recipients(engine: sa.Engine, run_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audience).where(
            audience.c.run_id == run_id, audience.c.outcome.in_(("send", "seed")))).scalar_one())


def test_winback_end_to_end_every_recipient_once(env: dict[str, Any]) -> None:
    engine, sandbox = env["engine"], env["sandbox"]
    history_before = _count(engine, contact_history)
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(engine, "qa")
    # a listed approver with a wrong key is refused and the wait goes on
    with pytest.raises(CampaignOpsError, match="key .* is wrong"):
        decide(env, run_id, QA_APPROVER, key="not-the-key")
    assert decide(env, run_id, QA_APPROVER) == "approved"
    wait_for_stage(engine, "business")
    # a person listed only for another stage may not sign this one
    with pytest.raises(CampaignOpsError, match="not an approver of stage business"):
        decide(env, run_id, QA_APPROVER)
    assert decide(env, run_id, BUSINESS_APPROVER) == "approved"
    out = run.result()
    assert isinstance(out, RunOutcome), out
    approved = recipients(engine, run_id)
    assert approved > 1000  # the winback brief's expected minimum
    delivered = sandbox.deliveries("winback-lapsed-customers", run_id)
    assert len(delivered) == approved and set(delivered.values()) == {1}
    assert isinstance(out.handoff, HttpHandoff)
    rec = out.handoff.reconciliation
    assert rec.matches and rec.approved == approved
    # contact history: one row per treated (non-seed) recipient
    sent = approved - out.waterfall.seeds
    assert _count(engine, contact_history) - history_before == sent
    assert runs.get_run(engine, run_id).status == runs.SENT
    steps = [(r.step, r.action) for r in audit.trail(engine, run_id)]
    assert ("approval:qa", "refused") in steps and ("approval:business", "approved") in steps
    assert steps[-1] == ("contact_history", "written")
    assert audit.verify(engine).ok
    _assert_no_personal_data_in_prefect(engine, run_id)


def run_approved(env: dict[str, Any]) -> tuple[str, Any]:
    """Start a winback run and approve both stages: (run id, the flow's result)."""
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(env["engine"], "qa")
    assert decide(env, run_id, QA_APPROVER) == "approved"
    wait_for_stage(env["engine"], "business")
    assert decide(env, run_id, BUSINESS_APPROVER) == "approved"
    return run_id, run.result()


def test_token_only_in_a_secret_block_end_to_end(env: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    engine, block = env["engine"], f"esp-token-flow-{uuid.uuid4().hex[:8]}"
    Secret(value=SecretStr(TOKEN)).save(block, overwrite=True)
    monkeypatch.delenv("CAMPAIGNOPS_ESP_TOKEN")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", block)
    run_id, out = run_approved(env)
    assert isinstance(out, RunOutcome), out  # the block was read inside the Prefect task
    delivered = env["sandbox"].deliveries("winback-lapsed-customers", run_id)
    assert len(delivered) == recipients(engine, run_id) and set(delivered.values()) == {1}
    assert out.handoff is not None and out.handoff.reconciled


def test_file_mode_end_to_end_releases_a_checked_drop(env: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    engine, drops = env["engine"], tmp_path / "drops"
    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "file")
    monkeypatch.setenv("CAMPAIGNOPS_FILE_DROP_DIR", str(drops))
    monkeypatch.delenv("CAMPAIGNOPS_ESP_TOKEN")  # a file drop needs no ESP token
    run_id, out = run_approved(env)
    assert isinstance(out, RunOutcome), out
    approved = recipients(engine, run_id)
    manifest = json.loads((drops / f"{run_id}.manifest.json").read_text())
    data = (drops / f"{run_id}.csv").read_bytes()
    assert isinstance(out.handoff, FileHandoff)
    assert manifest["rows"] == approved == out.handoff.rows
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert out.handoff.reconciled and out.handoff.qa_passed
    assert env["sandbox"].deliveries("winback-lapsed-customers", run_id) == {}
    assert out.contact_history == approved - out.waterfall.seeds
    assert runs.get_run(engine, run_id).status == runs.SENT
    steps = [(r.step, r.action) for r in audit.trail(engine, run_id)]
    assert ("handoff", "file_written") in steps and steps[-1] == ("contact_history", "written")
    _assert_no_personal_data_in_prefect(engine, run_id)


def test_rejection_ends_the_run_and_sends_nothing(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(engine, "qa")
    with pytest.raises(CampaignOpsError, match="needs a reason|reason is required"):
        decide(env, run_id, QA_APPROVER, decision="reject", reason="")
    assert decide(env, run_id, QA_APPROVER, decision="reject", reason="wrong offer") == "rejected"
    err = run.result()
    assert isinstance(err, ApprovalRejected) and "wrong offer" in str(err)
    assert env["sandbox"].deliveries("winback-lapsed-customers", run_id) == {}
    assert runs.get_run(engine, run_id).status == runs.REJECTED


def test_owner_unlisted_and_second_stage_signatures_are_refused(env: dict[str, Any],
                                                               tmp_path: Path) -> None:
    engine = env["engine"]
    data = yaml.safe_load(WINBACK.read_text())
    both = [QA_APPROVER, BUSINESS_APPROVER]
    data["approvals"] = [{"stage": "qa", "approvers": list(both)},
                         {"stage": "business", "approvers": list(both)}]  # no YAML alias
    brief = tmp_path / "shared-approvers.yaml"
    brief.write_text(yaml.safe_dump(data))
    owner = data["owner"]
    env["keys"][owner] = add_approver(engine, owner)
    run = FlowThread(brief)
    run_id = wait_for_stage(engine, "qa")
    with pytest.raises(CampaignOpsError, match="owns this campaign"):
        decide(env, run_id, owner)
    with pytest.raises(CampaignOpsError, match="not an approver"):
        decide(env, run_id, "mallory@example.com")
    assert decide(env, run_id, QA_APPROVER) == "approved"
    wait_for_stage(engine, "business")
    with pytest.raises(CampaignOpsError, match="already signed stage qa"):
        decide(env, run_id, QA_APPROVER)
    assert decide(env, run_id, BUSINESS_APPROVER, decision="reject", reason="stop") == "rejected"
    assert isinstance(run.result(), ApprovalRejected)
    refused = [r.details["why"] for r in audit.trail(engine, run_id) if r.action == "refused"]
    assert len(refused) == 3


def test_failing_qa_blocks_the_run(env: dict[str, Any], tmp_path: Path) -> None:
    data = yaml.safe_load(WINBACK.read_text())
    data["expected_audience"] = {"min": 1_000_000, "max": 2_000_000}
    brief = tmp_path / "too-small.yaml"
    brief.write_text(yaml.safe_dump(data))
    err = FlowThread(brief).result()
    assert isinstance(err, QAFailed) and "audience" in str(err).lower()
    with env["engine"].connect() as conn:
        (run_id, status), = conn.execute(sa.text("SELECT run_id, status FROM co_runs")).all()
    assert status == runs.QA_BLOCKED
    assert env["sandbox"].deliveries("winback-lapsed-customers", run_id) == {}
    steps = [(r.step, r.action) for r in audit.trail(env["engine"], run_id)]
    assert ("qa", "blocked") in steps and not any(s.startswith("approval") for s, _ in steps)


@pytest.mark.parametrize("problem, message", [
    ({"audience": {"include": {"field": "shoe_size", "op": "eq", "value": 3}}}, "unknown audience field"),
    ({"cells": [{"name": "a", "percent": 50, "offer_code": "EXPIRED5"},
                {"name": "b", "percent": 50, "offer_code": "NOPE"}]}, "expired on"),
])
def test_bad_briefs_fail_at_intake(env: dict[str, Any], tmp_path: Path, problem: dict[str, Any],
                                   message: str) -> None:
    data = yaml.safe_load(WINBACK.read_text()) | problem
    brief = tmp_path / "bad.yaml"
    brief.write_text(yaml.safe_dump(data))
    err = FlowThread(brief).result()
    assert isinstance(err, BriefError) and message in str(err)
    if "NOPE" in json.dumps(problem):
        assert "does not exist" in str(err)


def test_malformed_brief_file_fails_at_intake(env: dict[str, Any], tmp_path: Path) -> None:
    brief = tmp_path / "broken.yaml"
    brief.write_text("campaign_id: [oops\n")
    err = FlowThread(brief).result()
    assert isinstance(err, BriefError) and "not valid YAML" in str(err)


def test_unreachable_warehouse_is_a_clear_error(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    err = FlowThread(WINBACK).result()
    assert isinstance(err, WarehouseError) and "unreachable" in str(err)


def test_dry_run_counts_without_qa_approval_or_handoff(env: dict[str, Any]) -> None:
    out = FlowThread(WINBACK, mode="count").result()
    assert out.waterfall.recipients > 1000 and out.qa is None
    assert runs.get_run(env["engine"], out.run_id).status == runs.COUNTED


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def prefect_text(run_id: str) -> str:
    """The run's Prefect artifacts and log messages, as one text (asserting there are artifacts)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        fr = UUID(run_id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr])))
    assert artifacts, "the run published no artifacts"
    return "\n".join(str(a.data) for a in artifacts) + "\n".join(log.message for log in logs)


def _assert_no_personal_data_in_prefect(engine: sa.Engine, run_id: str) -> None:
    """No recipient address or name in the run's artifacts, logs or task results."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audience.c.email, audience.c.first_name, audience.c.last_name)
                            .where(audience.c.run_id == run_id, audience.c.outcome != "excluded")).all()
    personal = {v for r in rows for v in r if v and len(v) > 3}
    assert personal
    text = prefect_text(run_id)
    trail = json.dumps([r.details for r in audit.trail(engine, run_id)])
    for value in personal:
        assert value not in text, "personal data in Prefect artifacts or logs"
        assert value not in trail, "personal data in the audit trail"


def test_a_wait_past_its_timeout_expires_the_run(env: dict[str, Any], tmp_path: Path) -> None:
    data = yaml.safe_load(WINBACK.read_text())
    data["approval_timeout_hours"] = 0.001  # 3.6 seconds
    brief = tmp_path / "short-wait.yaml"
    brief.write_text(yaml.safe_dump(data))
    err = FlowThread(brief).result()
    # Prefect fails a pause that times out on the server side; our audit says why.
    assert isinstance(err, BaseException) and ("expired" in str(err) or "never resumed" in str(err))
    with env["engine"].connect() as conn:
        (run_id,) = conn.execute(sa.text("SELECT run_id FROM co_runs")).scalars().all()
    assert runs.get_run(env["engine"], run_id).status == runs.EXPIRED
    assert env["sandbox"].deliveries("winback-lapsed-customers", run_id) == {}
    assert [r.action for r in audit.trail(env["engine"], run_id)][-1] == "expired"


def test_audience_changed_after_approval_is_refused_at_handoff(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(engine, "qa")
    assert decide(env, run_id, QA_APPROVER) == "approved"
    wait_for_stage(engine, "business")
    # someone edits the approved audience between the two stages
    with engine.begin() as conn:
        conn.execute(sa.text(
            "UPDATE co_audience SET cell = 'fifteen_off', offer_code = 'SPRING15' WHERE row_id = "
            "(SELECT min(row_id) FROM co_audience WHERE run_id = :r AND cell = 'ten_off')"), {"r": run_id})
    assert decide(env, run_id, BUSINESS_APPROVER) == "approved"
    err = run.result()
    assert isinstance(err, HandoffError) and "differs from what was approved" in str(err)
    assert env["sandbox"].deliveries("winback-lapsed-customers", run_id) == {}


NEWSLETTER = ROOT / "examples" / "briefs" / "weekly-newsletter.yaml"
DIRECTOR = "blake.director@example.com"


def _newsletter_run(env: dict[str, Any], approve: bool, standing: bool = False) -> tuple[str, list[tuple[str, str, str]]]:
    run = FlowThread(NEWSLETTER)
    if approve:
        run_id = wait_for_stage(env["engine"], "business")
        assert submit_decision(load_settings(), run_id, DIRECTOR, None, "approve", "",
                               env["keys"][DIRECTOR], via="test", standing=standing) == "approved"
    out = run.result()
    assert isinstance(out, RunOutcome), out
    trail = [(r.step, r.action, r.actor) for r in audit.trail(env["engine"], out.run_id)]
    return out.run_id, trail


def _a_week_passes(engine: sa.Engine) -> None:
    """The newsletter is weekly: move its earlier sends and its holdout's would-be sends back a
    week, out of the frequency-cap window, as time would."""
    with engine.begin() as conn:
        conn.execute(sa.update(contact_history)
                     .where(contact_history.c.campaign_id == "weekly-newsletter")
                     .values(sent_at=contact_history.c.sent_at - dt.timedelta(days=7)))
        conn.execute(sa.update(holdout_contacts)
                     .where(holdout_contacts.c.campaign_id == "weekly-newsletter")
                     .values(contacted_at=holdout_contacts.c.contacted_at - dt.timedelta(days=7)))


def test_standing_approval_used_bypassed_by_a_warning_and_revoked(env: dict[str, Any]) -> None:
    from campaignops.approval import revoke_standing

    engine = env["engine"]
    # run 1: a person approves and grants a standing approval
    _, trail = _newsletter_run(env, approve=True, standing=True)
    assert ("approval:business", "approved", DIRECTOR) in trail
    # run 2: QA clean and the size within 15 % of run 1: no person needed
    _a_week_passes(engine)
    _, trail = _newsletter_run(env, approve=False)
    assert ("approval:business", "approved", f"{DIRECTOR} [standing approval]") in trail
    assert not any(a == "waiting" for _, a, _ in trail)
    # the warehouse shrinks by 30 %: QA warns about drift, so a person must decide
    _a_week_passes(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM customers WHERE customer_id % 10 < 3"))
    _, trail = _newsletter_run(env, approve=True)
    assert ("approval:business", "standing_bypassed", "campaignops") in trail
    assert ("approval:business", "approved", DIRECTOR) in trail
    # revoked: the next run waits for a person again
    assert revoke_standing(engine, "weekly-newsletter", None, DIRECTOR) == 1
    _a_week_passes(engine)
    _, trail = _newsletter_run(env, approve=True)
    assert ("approval:business", "waiting", "campaignops") in trail
    assert not any("standing" in a for _, a, _ in trail)


def test_standing_approval_refused_when_the_brief_does_not_allow_it(env: dict[str, Any]) -> None:
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(env["engine"], "qa")
    with pytest.raises(CampaignOpsError, match="does not allow a standing approval"):
        submit_decision(load_settings(), run_id, QA_APPROVER, None, "approve", "",
                        env["keys"][QA_APPROVER], via="test", standing=True)
    assert decide(env, run_id, QA_APPROVER, decision="reject", reason="done") == "rejected"
    assert isinstance(run.result(), ApprovalRejected)
