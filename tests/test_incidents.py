"""Incidents: opened against a faulty send, the impact report equal to the sandbox's record."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from campaignops import audit
from campaignops.automations import LEGAL_BLOCK, WEBHOOK_BLOCK, build
from campaignops.cli import main
from campaignops.errors import CampaignOpsError, NotFound, RemediationRefused
from campaignops.esp.sandbox import EspSandbox
from campaignops.incidents import (
    close_incident,
    event_payload,
    impact_report,
    list_incidents,
    open_incident,
    route,
)
from campaignops.settings import load_settings
from tests import remedykit as kit

pytestmark = pytest.mark.unit
NOTE = "Cell B got WELCOME10 instead of SPRING15; care centre took 3 calls"


@pytest.fixture
def sent(db_url: str, sandbox: EspSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The faulty spring run (cell B carries the wrong offer), sent to the sandbox."""
    return kit.faulty_send(db_url, sandbox, tmp_path, monkeypatch)


def test_impact_report_counts_equal_the_sandbox_record_for_the_cell(sent: dict[str, Any]) -> None:
    engine, run_id, sandbox = sent["engine"], sent["run_id"], sent["sandbox"]
    settings = load_settings()
    inc = open_incident(engine, settings, run_id, "wrong_offer", "care.centre", NOTE, cell="B")
    report = impact_report(engine, settings, inc.incident_id)
    cells = kit.cells_of(engine, run_id)
    at_esp_b = Counter(cells[c] for c in kit.sandbox_customers(sandbox, run_id))["B"]
    assert report.affected_customers == at_esp_b > 5
    assert [(r.outcome, r.cell, r.offer_code) for r in report.affected] == [("accepted", "B", "WELCOME10")]
    assert [a.stage for a in report.approvals] == ["qa", "business"]
    signed = [r for r in audit.trail(engine, run_id) if r.step.startswith("approval:") and r.action == "approved"]
    assert {a.packet_digest for a in report.approvals} == {r.details["packet_digest"] for r in signed}
    assert report.qa_passed is True and len(report.qa_checks) >= 5
    assert [a["action"] for a in report.actions] == ["opened"]
    assert report.route == ("owner", "legal")
    assert report.corrections == []
    rec = audit.latest(engine, run_id, "incident", ("opened",))
    assert rec is not None and audit.genuine(rec) and rec.details["incident_id"] == inc.incident_id
    assert "care centre" not in json.dumps(rec.details)  # the note stays in co_incidents
    closed = close_incident(engine, inc.incident_id, "ops.lead", "corrected and apologised")
    assert closed.status == "closed" and closed.closed_by == "ops.lead"
    assert [a["action"] for a in impact_report(engine, settings, inc.incident_id).actions] == ["opened", "closed"]
    with pytest.raises(RemediationRefused, match="already closed"):
        close_incident(engine, inc.incident_id, "ops.lead", "again")
    assert [i.incident_id for i in list_incidents(engine, "closed")] == [inc.incident_id]
    assert list_incidents(engine, "open") == []


def test_bad_incidents_are_refused_one_line_each(sent: dict[str, Any]) -> None:
    engine, run_id = sent["engine"], sent["run_id"]
    settings = load_settings()
    with pytest.raises(NotFound, match="no run nope"):
        open_incident(engine, settings, "nope", "wrong_offer", "care", NOTE)
    with pytest.raises(CampaignOpsError, match="has no cell 'Z'"):
        open_incident(engine, settings, run_id, "wrong_offer", "care", NOTE, cell="Z")
    with pytest.raises(CampaignOpsError, match="looks like an address or phone"):
        open_incident(engine, settings, run_id, "other", "care", "person7@example.com complained")
    with pytest.raises(CampaignOpsError, match="looks like an address or phone"):
        open_incident(engine, settings, run_id, "other", "care", "call back on +44 20 7946 0958")
    with pytest.raises(CampaignOpsError, match="is not a kind"):
        open_incident(engine, settings, run_id, "typo", "care", NOTE)
    from tests.flowkit import approved_run

    unsent, _ = approved_run(sent["keys"], kit.write_brief(sent["tmp"] / "again.yaml", kit.brief()))
    with pytest.raises(RemediationRefused, match="never sent"):
        open_incident(engine, settings, unsent, "wrong_offer", "care", NOTE)
    with pytest.raises(NotFound, match="no incident inc-nope"):
        impact_report(engine, settings, "inc-nope")
    assert list_incidents(engine) == []


def test_routing_is_configurable_and_the_event_names_no_person(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert route(settings, "wrong_audience") == ("owner", "legal")
    assert route(settings, "missed") == ("owner",)
    monkeypatch.setenv("CAMPAIGNOPS_INCIDENT_LEGAL_KINDS", "missed, other")
    custom = load_settings()
    assert route(custom, "missed") == ("owner", "legal") and route(custom, "wrong_offer") == ("owner",)
    from campaignops.incidents import Incident

    inc = Incident("inc-1", "r1", "spring-offer", "missed", "B", None, "care@example.com", NOTE, "open",
                   dt.datetime(2026, 12, 1))
    resource, payload = event_payload(inc, custom)
    assert resource["campaignops.legal"] == "true" and payload["route"] == ["owner", "legal"]
    assert "@" not in json.dumps([resource, payload]) and "care" not in json.dumps([resource, payload])


def test_the_automations_route_incidents_to_the_owner_and_to_legal() -> None:
    alerts, legal = uuid.uuid4(), uuid.uuid4()
    autos = {a.name: a for a in build(alerts, dt.timedelta(hours=1), {WEBHOOK_BLOCK: alerts, LEGAL_BLOCK: legal})}
    owner = autos["campaignops: incident: notify the owner"]
    to_legal = autos["campaignops: incident: notify legal"]
    assert owner.trigger.expect == {"campaignops.incident.opened"}  # type: ignore[union-attr]
    assert owner.actions[0].block_document_id == alerts  # type: ignore[union-attr]
    assert to_legal.actions[0].block_document_id == legal  # type: ignore[union-attr]
    assert to_legal.trigger.match.root == {"campaignops.legal": "true"}  # type: ignore[union-attr]
    only_alerts = {a.name: a for a in build(alerts, dt.timedelta(hours=1))}
    assert only_alerts["campaignops: incident: notify legal"].actions[0].block_document_id == alerts  # type: ignore[union-attr]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_open_show_list_close(sent: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[str, bool]] = []
    monkeypatch.setattr("campaignops.cli.incidents.publish",
                        lambda settings, report, opened=False: published.append((report.incident.incident_id, opened)))
    runner = CliRunner()
    run_id = sent["run_id"]
    opened = runner.invoke(main, ["incident", "open", run_id, "--kind", "wrong_offer", "--reported-by",
                                  "care.centre", "--note", NOTE, "--cell", "B"])
    assert opened.exit_code == 0, opened.output
    inc_id = opened.stdout.strip()
    assert inc_id.startswith("inc-") and published == [(inc_id, True)]
    shown = runner.invoke(main, ["incident", "show", inc_id])
    assert shown.exit_code == 0 and "wrong_offer" in shown.output and "business" in shown.output
    assert "@example.com" not in shown.output.replace("quinn.qa@example.com", "").replace(
        "blake.director@example.com", "")  # approvers are named; no recipient is
    listed = runner.invoke(main, ["incident", "list"])
    assert inc_id in listed.output
    closed = runner.invoke(main, ["incident", "close", inc_id, "--as", "ops.lead", "--note", "done"])
    assert closed.exit_code == 0 and published[-1] == (inc_id, False)
    for args, code in ((["incident", "show", "inc-nope"], 14),
                       (["incident", "open", "nope", "--kind", "other", "--reported-by", "x", "--note", "y"], 14),
                       (["incident", "close", inc_id, "--as", "x", "--note", "y"], 15),
                       (["incident", "open", run_id, "--kind", "other", "--reported-by", "x",
                         "--note", "mail a@b.example"], 1)):
        bad = runner.invoke(main, args)
        assert bad.exit_code == code and bad.output.count("\n") == 1, (args, bad.output)


@pytest.mark.flow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_event_and_the_impact_artifact_carry_counts_only(
        prefect_api: str, sent: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import tasks.incident

    events: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.incident, "emit_event", lambda **kw: events.append(kw))
    monkeypatch.setenv("CAMPAIGNOPS_INCIDENT_LEGAL_KINDS", "wrong_offer")
    result = CliRunner().invoke(main, ["incident", "open", sent["run_id"], "--kind", "wrong_offer",
                                       "--reported-by", "care.centre", "--note", NOTE, "--cell", "B"])
    assert result.exit_code == 0, result.output
    inc_id = result.stdout.strip()
    assert [e["event"] for e in events] == ["campaignops.incident.opened"]
    assert events[0]["resource"]["prefect.resource.id"] == f"campaignops.incident.{inc_id}"
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=f"%{inc_id}%")))
    assert found, f"no impact artifact: {result.output}"
    text = str(found[0].data)
    assert inc_id in text and "| accepted | B | WELCOME10 |" in text
    assert "person" not in text and NOTE not in text and "@example.com|" not in text
    assert "person" not in json.dumps(events, default=str)
