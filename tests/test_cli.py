"""The `campaignops` command: --help everywhere, one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from campaignops.cli import main

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
WINBACK = str(ROOT / "examples" / "briefs" / "winback.yaml")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "campaignops")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_brief_check_good_and_bad(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["brief", "check", "--offline", WINBACK])
    assert ok.exit_code == 0 and "is valid" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaign_id: x\nname: y\n")
    result = runner.invoke(main, ["brief", "check", "--offline", str(bad)])
    assert result.exit_code == 2 and "problems" in result.output and "required field is missing" in result.output
    missing = runner.invoke(main, ["brief", "check", "--offline", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no file at" in missing.output


def test_unreachable_warehouse_is_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "campaignops.cli", "--warehouse-url",
         "postgresql+psycopg://nobody@127.0.0.1:1/none", "brief", "check", WINBACK],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3  # WarehouseError
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unreachable" in proc.stderr and "CAMPAIGNOPS_WAREHOUSE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_warehouse_init_refuses_to_overwrite_and_rebuilds_with_replace(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--home", str(tmp_path), "warehouse", "init", "--customers", "2000", "--quiet"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0 and "2,000 customers" in first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 3 and "--replace" in again.output
    assert runner.invoke(main, [*args, "--replace"]).exit_code == 0
    checked = runner.invoke(main, ["--home", str(tmp_path), "brief", "check", WINBACK])
    assert checked.exit_code == 0, checked.output


def test_approver_keys_and_unknown_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    assert runner.invoke(main, [*home, "warehouse", "init", "--customers", "500", "--quiet"]).exit_code == 0
    added = runner.invoke(main, [*home, "approvers", "add", "quinn.qa@example.com"])
    assert added.exit_code == 0 and "shown once" in added.output
    dup = runner.invoke(main, [*home, "approvers", "add", "quinn.qa@example.com"])
    assert dup.exit_code == 1 and "--rotate" in dup.output
    monkeypatch.setenv("CAMPAIGNOPS_APPROVER_KEY", "whatever")
    unknown = runner.invoke(main, [*home, "approve", "no-such-run", "--as", "quinn.qa@example.com"])
    assert unknown.exit_code == 1 and "no run no-such-run" in unknown.output
    assert "nothing waits" in runner.invoke(main, [*home, "approvals"]).output
    verify = runner.invoke(main, [*home, "audit", "verify"])
    assert verify.exit_code == 0 and "intact" in verify.output


def test_missing_esp_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignops.errors import CampaignOpsError
    from campaignops.secrets import load_esp_token

    monkeypatch.delenv("CAMPAIGNOPS_ESP_TOKEN", raising=False)
    with pytest.raises(CampaignOpsError, match="CAMPAIGNOPS_ESP_TOKEN is not set"):
        load_esp_token()
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "s3cret-value")
    token = load_esp_token()
    assert "s3cret-value" not in repr(token) and "s3cret-value" not in str(token)


def test_prefect_senders_drain_quietly_under_the_cli() -> None:
    """The CLI keeps Prefect's sender-drain warnings (EventsWorker, APILogWorker) off the terminal."""
    import logging

    from campaignops.cli.quiet import PREFECT_SENDERS

    assert CliRunner().invoke(main, ["brief", "--help"]).exit_code == 0
    assert all(not logging.getLogger(n).isEnabledFor(logging.WARNING) for n in PREFECT_SENDERS)
    assert all(logging.getLogger(n).isEnabledFor(logging.ERROR) for n in PREFECT_SENDERS)


def test_approvers_list_and_audit_show_full(tmp_path: Path) -> None:
    """`approvers list` names approvers, never keys; `audit show --full` prints details whole."""
    from campaignops import audit
    from campaignops.resources import open_resources
    from campaignops.settings import load_settings

    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    assert runner.invoke(main, [*home, "warehouse", "init", "--customers", "500", "--quiet"]).exit_code == 0
    empty = runner.invoke(main, [*home, "approvers", "list"])
    assert empty.exit_code == 0 and "no approvers yet" in empty.output
    keys = [runner.invoke(main, [*home, "approvers", "add", n]).output.splitlines()[1]
            for n in ("quinn.qa@example.com", "blake.director@example.com")]
    listed = runner.invoke(main, [*home, "approvers", "list"])
    assert listed.exit_code == 0 and "2 approver(s)" in listed.output
    assert "quinn.qa@example.com" in listed.output and "person" in listed.output
    assert not any(k in listed.output for k in keys)
    engine = open_resources(load_settings(home=tmp_path)).warehouse.engine
    long_why = "a reason " * 40 + "END"
    audit.append(engine, run_id="r-long", step="run", action="failed", actor="campaignops",
                 details={"why": long_why, "nested": {"n": 1}})
    short = runner.invoke(main, [*home, "audit", "show", "r-long"])
    assert short.exit_code == 0 and "END" not in short.output
    assert "`campaignops audit show r-long --full` shows them whole" in short.output
    full = runner.invoke(main, [*home, "audit", "show", "r-long", "--full"])
    assert full.exit_code == 0 and long_why in full.output and '"nested": {"n": 1}' in full.output
    assert "run failed by campaignops (signed)" in full.output
