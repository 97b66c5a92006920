"""A whole SMS run through the campaign flow (what `campaignops run` starts): intake,
segmentation, QA, both signed approvals, the handoff to the sandbox ESP's SMS endpoint,
reconciliation and contact history; no phone number in Prefect's artifacts or logs.

The brief is examples/briefs/sms-flash-sale.yaml with a fixed send time (its own
``send_at: null`` is judged against quiet hours at the wall clock) on a warehouse of
valid numbers built here (the synthetic warehouse's are fictitious +1 555 numbers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops import audit, runs
from campaignops.approvers import add_approver
from campaignops.esp import EspSandbox
from campaignops.handoff.http import HttpHandoff
from campaignops.resume import submit_decision
from campaignops.schema import contact_history, deliveries
from campaignops.settings import load_settings
from flows.campaign import RunOutcome
from tests.factories import build_warehouse, customer
from tests.flowkit import FlowThread, wait_for_stage
from tests.test_flow import prefect_text

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "briefs" / "sms-flash-sale.yaml"
TOKEN = "sms-flow-token-0e5b"
QA_APPROVER, BUSINESS_APPROVER = "quinn.qa@example.com", "blake.director@example.com"
SEND_AT = "2027-03-02T19:00:00Z"  # open in every US zone and in London


def people() -> list[dict[str, Any]]:
    """150 US and 50 GB customers who opted in to SMS, numbers as people write them, plus
    one whose number is invalid and one who did not opt in."""
    rows = [customer(i, phone=f"(415) 555-{i:04d}", sms_opt_in=True, country="US",
                     first_name=f"Adaq{i:03d}") for i in range(1, 151)]
    rows += [customer(i, phone=f"020 7946 0{i:03d}", sms_opt_in=True, country="GB", region=None,
                      first_name=f"Brix{i:03d}") for i in range(151, 201)]
    rows.append(customer(201, phone="+1 555 0201 777", sms_opt_in=True, first_name="Cyrq201"))
    rows.append(customer(202, phone="(415) 555-0202", sms_opt_in=False, first_name="Dorq202"))
    return rows


def test_the_sms_flash_sale_runs_end_to_end_and_reconciles(
    prefect_api: str, sandbox: EspSandbox, sqlite_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = people()
    engine = build_warehouse(sqlite_url, rows)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", sandbox._token)
    keys = {n: add_approver(engine, n) for n in (QA_APPROVER, BUSINESS_APPROVER)}
    brief = tmp_path / "sms-flash-sale.yaml"
    brief.write_text(yaml.safe_dump(yaml.safe_load(EXAMPLE.read_text()) | {"send_at": SEND_AT}))

    run = FlowThread(brief)
    run_id = wait_for_stage(engine, "qa")
    for stage, name in (("qa", QA_APPROVER), ("business", BUSINESS_APPROVER)):
        if stage == "business":
            wait_for_stage(engine, "business")
        assert submit_decision(load_settings(), run_id, name, None, "approve", "", keys[name],
                               via="test") == "approved"
    out = run.result()
    assert isinstance(out, RunOutcome), out
    assert isinstance(out.handoff, HttpHandoff) and out.handoff.reconciled
    rec = out.handoff.reconciliation
    wf = out.waterfall
    assert wf.recipients == rec.approved == rec.accepted and rec.rejected == 0
    assert 150 < wf.recipients + wf.control <= 200  # the invalid and the unconsented are excluded
    assert rec.segments == rec.expected_segments == rec.accepted  # one segment each
    delivered = sandbox.deliveries("sms-flash-sale", run_id)
    assert len(delivered) == rec.approved and set(delivered.values()) == {1}
    assert {r["send_at"] for r in sandbox.sms_rows("sms-flash-sale", run_id)} == {SEND_AT}
    assert runs.get_run(engine, run_id).status == runs.SENT
    with engine.connect() as conn:
        sent = conn.execute(sa.select(sa.func.count()).select_from(contact_history).where(
            contact_history.c.run_id == run_id, contact_history.c.channel == "sms")).scalar_one()
        recorded = conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.run_id == run_id, deliveries.c.outcome == "accepted")).scalar_one()
    assert sent == recorded == rec.accepted
    steps = [(r.step, r.action) for r in audit.trail(engine, run_id)]
    assert ("handoff", "reconciled") in steps and steps[-1] == ("contact_history", "written")
    _assert_no_phone_or_name_in_prefect(engine, run_id, rows)


def _assert_no_phone_or_name_in_prefect(engine: sa.Engine, run_id: str, rows: list[dict[str, Any]]) -> None:
    from campaignops.sms import e164

    personal = {r["phone"] for r in rows} | {r["first_name"] for r in rows}
    personal |= {n for r in rows if (n := e164(r["phone"], r["country"]))}
    text = prefect_text(run_id)
    trail = json.dumps([r.details for r in audit.trail(engine, run_id)])
    leaked = sorted(v for v in personal if v in text or v in trail)
    assert not leaked, f"{len(leaked)} phone numbers or names in artifacts, logs or the audit trail"
