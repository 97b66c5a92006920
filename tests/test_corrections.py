"""Correction campaigns: from_run and missed_by audiences, remediate linked to the incident."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from campaignops import audit
from campaignops.brief import validate_brief
from campaignops.cli import main
from campaignops.errors import BriefError, RemediationRefused
from campaignops.esp.sandbox import EspSandbox
from campaignops.incidents import impact_report, open_incident, plan_remediation
from campaignops.intake import accept_brief
from campaignops.schema import audience, customers, deliveries, suppressions
from campaignops.settings import load_settings
from tests import remedykit as kit
from tests.factories import brief_dict
from tests.flowkit import warehouse

pytestmark = pytest.mark.unit
NOTE = "Cell B got WELCOME10 instead of SPRING15"


@pytest.fixture
def sent(db_url: str, sandbox: EspSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The faulty spring run (cell B carries the wrong offer), sent to the sandbox."""
    return kit.faulty_send(db_url, sandbox, tmp_path, monkeypatch)


def _suppress(engine: sa.Engine, customer_ids: list[int]) -> None:
    """Those customers unsubscribe after the faulty send."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(sa.insert(suppressions), [
            {"channel": "email", "address": f"person{c}@example.com", "reason": "unsubscribe",
             "created_at": now} for c in customer_ids])


def _rows_at_esp(sandbox: EspSandbox, run_id: str, campaign: str) -> list[int]:
    """Every customer row the sandbox recorded for the run (repeats kept)."""
    return [int(r["customer_id"]) for r in sandbox.delivery_rows(campaign, run_id) if not r["seed"]]


def test_a_correction_reaches_exactly_the_cell_minus_the_suppressed_once(sent: dict[str, Any]) -> None:
    engine, run_id, sandbox, tmp = sent["engine"], sent["run_id"], sent["sandbox"], sent["tmp"]
    settings = load_settings()
    inc = open_incident(engine, settings, run_id, "wrong_offer", "care.centre", NOTE, cell="B")
    cells = kit.cells_of(engine, run_id)
    at_esp_b = sorted(c for c in kit.sandbox_customers(sandbox, run_id) if cells[c] == "B")
    assert impact_report(engine, settings, inc.incident_id).affected_customers == len(at_esp_b) > 5
    gone = at_esp_b[:2]
    _suppress(engine, gone)
    fix = kit.write_brief(tmp / "fix.yaml", kit.correction_brief(
        {"from_run": {"run": run_id, "cells": ["B"], "offers": ["WELCOME10"]}}))
    expected = sorted(set(at_esp_b) - set(gone))
    assert plan_remediation(warehouse(), inc.incident_id, fix) == len(expected)

    corrected = kit.remediate(sent["keys"], fix, inc.incident_id)
    campaign = f"{kit.CAMPAIGN}-fix"
    # cap waived: everyone in B was contacted once in the window, max_messages is 1
    assert kit.delivered(engine, corrected) == expected
    assert sorted(_rows_at_esp(sandbox, corrected, campaign)) == expected  # each once, at the ESP
    approved = [r.step for r in audit.trail(engine, corrected) if r.action == "approved"]
    assert approved == ["approval:qa", "approval:business"]
    report = impact_report(engine, settings, inc.incident_id)
    assert [(c.run_id, c.delivered) for c in report.corrections] == [(corrected, len(expected))]
    assert [a["action"] for a in report.actions] == ["opened", "correction_started"]

    # a second remediate of the same incident sends nothing new: refused before any run ...
    with pytest.raises(RemediationRefused, match=f"{len(expected)} already reached"):
        plan_remediation(warehouse(), inc.incident_id, fix)
    # ... and by segmentation itself, should a run start anyway
    with pytest.raises(RemediationRefused, match="nobody is left to correct"):
        kit.remediate(sent["keys"], fix, inc.incident_id)
    assert sorted(_rows_at_esp(sandbox, corrected, campaign)) == expected
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.run_id.in_([c.run_id for c in impact_report(
                engine, settings, inc.incident_id).corrections]), deliveries.c.is_seed == sa.false())
        ).scalar_one()
    assert total == len(expected)

    # kpis: one defect escaped QA in the faulty campaign, remediated in the time it took
    from campaignops.kpis import campaign_kpis, kpi_table_rows

    kpis = {c.campaign_id: c for c in campaign_kpis(engine)}
    spring = kpis[kit.CAMPAIGN]
    assert (spring.incidents, spring.remediated) == (1, 1)
    assert spring.median_remediate_seconds is not None
    took = next(r for r in audit.trail(engine, corrected) if r.step == "handoff"
                and r.action == "reconciled").created_at
    opened = dt.datetime.fromisoformat(took).replace(tzinfo=None) - inc.opened_at
    assert spring.median_remediate_seconds == pytest.approx(opened.total_seconds(), abs=1)
    assert kpis[f"{kit.CAMPAIGN}-fix"].incidents == 0
    row = next(r for r in kpi_table_rows(list(kpis.values())) if r["campaign"] == kit.CAMPAIGN)
    assert row["incidents (escaped QA)"] == 1 and row["median time to remediate"].endswith("(1/1)")


def test_a_missed_by_correction_sends_exactly_the_missed(sent: dict[str, Any]) -> None:
    engine, sandbox, tmp, keys = sent["engine"], sent["sandbox"], sent["tmp"], sent["keys"]
    settings = load_settings()
    with engine.begin() as conn:  # a third of the customers live in France
        conn.execute(sa.update(customers).where(customers.c.customer_id % 3 == 0).values(country="FR"))
    # the rule bug: the brief meant every customer, it said only those in the US
    buggy = kit.brief(campaign_id="autumn", audience={"include": {"all": [
        {"field": "lifecycle_stage", "op": "eq", "value": "customer"},
        {"field": "country", "op": "eq", "value": "US"}]}})
    faulty = kit.send(keys, kit.write_brief(tmp / "autumn.yaml", buggy))
    inc = open_incident(engine, settings, faulty, "missed", "care.centre", "French customers got nothing")
    fix = kit.write_brief(tmp / "autumn-fix.yaml", kit.correction_brief(
        {"include": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}, "missed_by": faulty},
        campaign_id="autumn-fix"))
    corrected = kit.remediate(keys, fix, inc.incident_id)
    with engine.connect() as conn:
        french = sorted(int(c) for c in conn.execute(sa.select(customers.c.customer_id).where(
            customers.c.country == "FR", customers.c.lifecycle_stage == "customer")).scalars())
        held = {int(c) for c in conn.execute(sa.select(audience.c.customer_id).where(
            audience.c.run_id == faulty, audience.c.outcome == "control")).scalars()}
    assert held and not held & set(french)
    assert kit.delivered(engine, corrected) == french  # the missed, not the holdout, not the reached
    assert sorted(_rows_at_esp(sandbox, corrected, "autumn-fix")) == french
    assert not set(kit.delivered(engine, faulty)) & set(french)


def test_bad_correction_briefs_are_refused_one_line_each(sent: dict[str, Any]) -> None:
    engine, run_id, tmp, keys = sent["engine"], sent["run_id"], sent["tmp"], sent["keys"]
    from tests.flowkit import approved_run

    unsent, _ = approved_run(keys, kit.write_brief(tmp / "again.yaml", kit.brief()))
    cases: dict[str, dict[str, Any]] = {
        "no run nope in the run register": {"from_run": {"run": "nope"}},
        f"run {unsent} never sent": {"from_run": {"run": unsent}},
        f"cells[1]: run {run_id} has no cell 'Z'; its cells are A, B": {
            "from_run": {"run": run_id, "cells": ["B", "Z"]}},
        f"offers[0]: run {run_id} carried no offer 'SPRING15'": {
            "from_run": {"run": run_id, "offers": ["SPRING15"]}},
        "audience.missed_by: no run gone": {
            "include": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}, "missed_by": "gone"},
    }
    for i, (why, source) in enumerate(cases.items()):
        path = kit.write_brief(tmp / f"bad{i}.yaml", kit.correction_brief(source))
        with pytest.raises(BriefError) as err:
            accept_brief(warehouse(), f"bad-{i}", str(path), "count")
        assert len(err.value.problems) == 1 and why in err.value.problems[0], err.value.problems
    good = kit.write_brief(tmp / "good.yaml", kit.correction_brief({"from_run": {"run": run_id}}))
    with pytest.raises(BriefError, match="campaignops remediate INCIDENT"):
        accept_brief(warehouse(), "no-incident", str(good), "full")
    counted = accept_brief(warehouse(), "counted", str(good), "count")  # a dry run may count it
    assert counted.campaign_id == f"{kit.CAMPAIGN}-fix"
    with pytest.raises(BriefError, match="only a correction"):
        validate_brief(brief_dict(waive_frequency_cap=True))
    with pytest.raises(BriefError, match="include is required"):
        validate_brief(brief_dict(audience={"missed_by": run_id}))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.run_id.in_(["no-incident", "counted"]))).scalar_one() == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_remediate_refusals_exit_with_one_line(sent: dict[str, Any]) -> None:
    engine, run_id, tmp = sent["engine"], sent["run_id"], sent["tmp"]
    settings = load_settings()
    inc = open_incident(engine, settings, run_id, "wrong_offer", "care.centre", NOTE, cell="B")
    fix = kit.write_brief(tmp / "fix.yaml", kit.correction_brief({"from_run": {"run": run_id}}))
    plain = kit.write_brief(tmp / "plain.yaml", kit.brief(campaign_id="plain"))
    other = kit.write_brief(tmp / "other.yaml", kit.correction_brief({"from_run": {"run": "nope"}}))
    runner = CliRunner()
    for args, code, says in (
            (["remediate", "inc-nope", "--brief", str(fix)], 14, "no incident inc-nope"),
            (["remediate", inc.incident_id, "--brief", str(plain)], 15, "not a correction"),
            (["remediate", inc.incident_id, "--brief", str(other)], 15, "is about run"),
    ):
        bad = runner.invoke(main, args)
        assert bad.exit_code == code and bad.output.count("\n") == 1 and says in bad.output, (
            args, bad.output)
    accept_brief(warehouse(), "pending-fix", str(fix), "full", inc.incident_id)  # not yet decided
    busy = runner.invoke(main, ["remediate", inc.incident_id, "--brief", str(fix)])
    assert busy.exit_code == 15 and "correction run pending-fix is still under way" in busy.output
    from campaignops.incidents import close_incident

    close_incident(engine, inc.incident_id, "ops.lead", "handled by phone")
    closed = runner.invoke(main, ["remediate", inc.incident_id, "--brief", str(fix)])
    assert closed.exit_code == 15 and "is closed" in closed.output
    assert Counter(r.action for r in audit.of_step(engine, "incident")) == {
        "opened": 1, "correction_started": 1, "closed": 1}



@pytest.mark.flow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_remediate_runs_the_campaign_flow_through_its_approvals(
        prefect_api: str, sent: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import contextvars
    import threading

    from campaignops.corrections import incident_of
    from campaignops.resume import submit_decision
    from tests.flowkit import WINBACK_APPROVERS, wait_for_stage

    engine, run_id, sandbox, tmp, keys = (sent["engine"], sent["run_id"], sent["sandbox"],
                                          sent["tmp"], sent["keys"])
    monkeypatch.setattr("campaignops.cli.incidents.publish", lambda *a, **k: None)
    inc = open_incident(engine, load_settings(), run_id, "wrong_offer", "care.centre", NOTE, cell="B")
    fix = kit.write_brief(tmp / "fix.yaml", kit.correction_brief(
        {"from_run": {"run": run_id, "cells": ["B"]}}))
    cells = kit.cells_of(engine, run_id)
    expected = sorted(c for c in kit.sandbox_customers(sandbox, run_id) if cells[c] == "B")
    done: dict[str, Any] = {}

    def remediate() -> None:
        done["result"] = CliRunner().invoke(main, ["remediate", inc.incident_id, "--brief", str(fix)])

    thread = threading.Thread(target=contextvars.copy_context().run, args=(remediate,), daemon=True)
    thread.start()
    for stage in ("qa", "business"):
        corrected = wait_for_stage(engine, stage)
        name = WINBACK_APPROVERS[stage]
        assert submit_decision(load_settings(), corrected, name, None, "approve", "", keys[name],
                               via="test") == "approved"
    thread.join(120)
    result = done["result"]
    assert result.exit_code == 0, result.output
    assert f"correction run {corrected} of incident {inc.incident_id} sent" in result.stdout
    assert incident_of(engine, corrected) == inc.incident_id
    assert kit.delivered(engine, corrected) == expected
    assert sorted(_rows_at_esp(sandbox, corrected, f"{kit.CAMPAIGN}-fix")) == expected
    again = CliRunner().invoke(main, ["remediate", inc.incident_id, "--brief", str(fix)])
    assert again.exit_code == 15 and again.output.count("\n") == 1
    assert f"{len(expected)} already reached" in again.output
