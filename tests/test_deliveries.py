"""Who got what: `audit recipients` and `audit who-received` against the ESP sandbox's own record."""

from __future__ import annotations

import csv
import logging
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from campaignops import audit
from campaignops.cli import main
from campaignops.deliveries import recipient_counts, total, who_received
from campaignops.errors import CampaignOpsError, NotFound
from campaignops.esp.sandbox import EspSandbox
from tests import remedykit as kit

pytestmark = pytest.mark.unit


@pytest.fixture
def sent(db_url: str, sandbox: EspSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A faulty spring run sent to the sandbox, on SQLite and on PostgreSQL."""
    keys = kit.setup_warehouse(db_url, monkeypatch, sandbox.url)
    run_id = kit.send(keys, kit.write_brief(tmp_path / "spring.yaml", kit.brief()))
    from tests.flowkit import warehouse

    return {"engine": warehouse().engine, "run_id": run_id, "sandbox": sandbox, "tmp": tmp_path}


def test_recipient_counts_equal_the_sandbox_record(sent: dict[str, Any]) -> None:
    engine, run_id, sandbox = sent["engine"], sent["run_id"], sent["sandbox"]
    at_esp = kit.sandbox_customers(sandbox, run_id)
    cells = kit.cells_of(engine, run_id)
    per_cell = Counter(cells[c] for c in at_esp)
    assert per_cell["A"] > 5 and per_cell["B"] > 5
    rows = recipient_counts(engine, run_id)
    by = {(r.outcome, r.cell): r for r in rows}
    assert by[("accepted", "A")].customers == per_cell["A"]
    assert by[("accepted", "B")].customers == per_cell["B"]
    assert total([r for r in rows if r.outcome == "accepted"]) == (len(at_esp), 1)
    control = by[("control", None)].customers
    assert control + len(at_esp) == kit.CUSTOMERS and control > 0
    only_b = recipient_counts(engine, run_id, cell="B", outcome="accepted")
    assert [(r.cell, r.offer_code, r.customers, r.seeds) for r in only_b] == [("B", "WELCOME10", per_cell["B"], 0)]
    assert recipient_counts(engine, run_id, outcome="rejected") == []
    assert kit.delivered(engine, run_id) == at_esp


def test_who_received_counts_every_run_of_the_offer(sent: dict[str, Any]) -> None:
    engine, run_id, sandbox = sent["engine"], sent["run_id"], sent["sandbox"]
    rows = who_received(engine, "WELCOME10")
    assert total(rows) == (len(kit.sandbox_customers(sandbox, run_id)), 0)  # seeds carry no offer
    assert {r.run_id for r in rows} == {run_id}
    assert who_received(engine, "SPRING15") == []
    assert who_received(engine, "WELCOME10", campaign_id="another-campaign") == []
    import datetime as dt

    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert who_received(engine, "WELCOME10", since=future) == []
    assert total(who_received(engine, "WELCOME10", since=future - dt.timedelta(days=2)))[0] > 0


def test_bad_filters_are_one_line_each(sent: dict[str, Any]) -> None:
    engine, run_id = sent["engine"], sent["run_id"]
    with pytest.raises(NotFound, match="no run nope"):
        recipient_counts(engine, "nope")
    with pytest.raises(CampaignOpsError, match="has no cell 'Z'; its cells are A, B"):
        recipient_counts(engine, run_id, cell="Z")
    with pytest.raises(CampaignOpsError, match="carried no offer 'SPRING15'"):
        recipient_counts(engine, run_id, offer_code="SPRING15")
    with pytest.raises(CampaignOpsError, match="holdout has no cell"):
        recipient_counts(engine, run_id, cell="A", outcome="control")
    with pytest.raises(NotFound, match="no offer 'NOPE'"):
        who_received(engine, "NOPE")


def test_cli_counts_and_an_audited_export_without_an_address_on_screen(
        sent: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, run_id, sandbox, tmp = sent["engine"], sent["run_id"], sent["sandbox"], sent["tmp"]
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    at_esp = kit.sandbox_customers(sandbox, run_id)
    shown = runner.invoke(main, ["audit", "recipients", run_id])
    assert shown.exit_code == 0, shown.output
    assert "accepted" in shown.output and "control" in shown.output and "@" not in shown.output
    counted = runner.invoke(main, ["audit", "recipients", run_id, "--outcome", "accepted", "--count"])
    assert counted.output.strip() == str(len(at_esp))
    who = runner.invoke(main, ["audit", "who-received", "--offer", "WELCOME10", "--count"])
    assert who.exit_code == 0 and who.output.strip() == str(len(at_esp))
    out = tmp / "b.csv"
    exported = runner.invoke(main, ["audit", "recipients", run_id, "--cell", "B", "--outcome", "accepted",
                                    "--out", str(out), "--as", "care.lead@example.com"])
    assert exported.exit_code == 0, exported.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cells = kit.cells_of(engine, run_id)
    assert sorted(int(r["customer_id"]) for r in rows) == [c for c in at_esp if cells[c] == "B"]
    assert {r["address"] for r in rows} == {f"person{r['customer_id']}@example.com" for r in rows}
    rec = audit.latest(engine, run_id, "audit", ("exported",))
    assert rec is not None and audit.genuine(rec) and rec.actor == "care.lead@example.com"
    assert rec.details["rows"] == len(rows) and rec.details["filter"] == {
        "run_id": run_id, "cell": "B", "outcome": "accepted"}
    again = runner.invoke(main, ["audit", "recipients", run_id, "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    whole = tmp / "who.csv"
    assert runner.invoke(main, ["audit", "who-received", "--offer", "WELCOME10", "--out", str(whole)]).exit_code == 0
    assert sum(1 for _ in whole.open()) == len(at_esp) + 1  # header + customers
    for text in (shown.output, counted.output, exported.output, caplog.text,
                 str([r.details for r in audit.trail(engine, run_id)])):
        assert "person" not in text and "seed.example" not in text
    bad = runner.invoke(main, ["audit", "recipients", "nope"])
    assert bad.exit_code == 14 and bad.output.count("\n") == 1 and "no run nope" in bad.output
    cell = runner.invoke(main, ["audit", "recipients", run_id, "--cell", "Z"])
    assert cell.exit_code == 1 and cell.output.count("\n") == 1
