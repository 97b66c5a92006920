"""Every ordinary outcome ends with one line and its own exit code, never a traceback, in a
real terminal (a subprocess); a paused run says who must approve, how, and where (issue 21, point 5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops.approvers import add_approver
from campaignops.esp.sandbox import EspSandbox
from campaignops.resume import submit_decision
from campaignops.settings import load_settings
from tests.conftest import AUDIT_KEY, TOKEN
from tests.flowkit import WINBACK, WINBACK_APPROVERS, wait_for_stage, warehouse

pytestmark = pytest.mark.flow
CRASH_NOISE = ("Traceback", "Finished in state Failed", "Encountered exception")


@pytest.fixture
def term(prefect_api: str, warehouse_template: Path, sandbox: EspSandbox, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The environment of a terminal: a warehouse copy, the sandbox, the Prefect API, approvers."""
    wh = tmp_path / "warehouse.db"
    shutil.copy(warehouse_template, wh)
    env = {"CAMPAIGNOPS_HOME": str(tmp_path / "home"), "CAMPAIGNOPS_WAREHOUSE_URL": f"sqlite:///{wh}",
           "CAMPAIGNOPS_ESP_URL": sandbox.url, "CAMPAIGNOPS_ESP_TOKEN": TOKEN,
           "CAMPAIGNOPS_AUDIT_KEY": AUDIT_KEY, "PREFECT_API_URL": prefect_api}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    engine = warehouse().engine
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    yield {"env": {**os.environ, **env}, "engine": engine, "keys": keys, "tmp": tmp_path}


def start(term: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    """`campaignops ARGS` in a subprocess, as a terminal would run it."""
    return subprocess.Popen([sys.executable, "-m", "campaignops.cli", *args], env=term["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) once the command ended."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def last_line(text: str) -> str:
    """The last non-empty line that is not Prefect's temporary-server note."""
    lines = [line for line in text.splitlines() if line.strip() and "temporary server" not in line]
    return lines[-1] if lines else ""


def brief_with(term: dict[str, Any], name: str, **changes: Any) -> Path:
    """winback.yaml with top-level keys replaced."""
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data.update(changes)
    path = Path(term["tmp"]) / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def assert_one_line(code: int, err: str, expected_code: int, start_of_line: str) -> None:
    """The command ended with one line, its code, and no crash noise."""
    assert code == expected_code, err[-2000:]
    assert last_line(err).startswith(start_of_line), err[-2000:]
    for noise in CRASH_NOISE:
        assert noise not in err, (noise, err[-3000:])


def test_a_rejected_run_ends_in_one_line_and_the_pause_said_who_and_how(term: dict[str, Any]) -> None:
    """Paused: who must approve which stage, the exact commands, the UI link; rejected: exit 5."""
    proc = start(term, "run", str(WINBACK))
    run_id = wait_for_stage(term["engine"], "qa", timeout=120)
    name = WINBACK_APPROVERS["qa"]
    assert submit_decision(load_settings(), run_id, name, None, "reject", "wrong offer",
                           term["keys"][name], via="test") == "rejected"
    code, out, err = finish(proc)
    assert_one_line(code, err, 5, f"error: stage qa rejected by {name}: wrong offer")
    said = out + err
    assert f"run {run_id} waits for stage qa until " in said
    assert f"{name} must approve or reject it" in said
    assert f"CAMPAIGNOPS_APPROVER_KEY=... campaignops approve {run_id} --as {name}" in said
    assert f"campaignops reject {run_id} --as {name} --reason" in said
    assert f"/runs/flow-run/{run_id}" in said


def test_an_expired_wait_ends_in_one_line(term: dict[str, Any]) -> None:
    """Nobody decided in time: exit 6, one line."""
    brief = brief_with(term, "short.yaml", approval_timeout_hours=0.001)
    code, _, err = finish(start(term, "run", str(brief)))
    assert_one_line(code, err, 6, "error: approval wait for stage qa expired; the run did not send")


def test_a_qa_block_ends_in_one_line_saying_what_to_do(term: dict[str, Any]) -> None:
    """QA blocks: exit 4, the check, what it means and the docs link, in one line."""
    brief = brief_with(term, "tiny.yaml", expected_audience={"min": 1, "max": 10})
    code, _, err = finish(start(term, "qa", str(brief)))
    assert_one_line(code, err, 4, "error: QA blocked run ")
    assert "audience_size_in_expected_range" in last_line(err)
    assert "(docs/qa.md#audience_size_in_expected_range)" in last_line(err)


def test_a_bad_brief_on_a_dry_run_ends_with_its_problems_only(term: dict[str, Any]) -> None:
    """run --dry-run on a bad brief: exit 2, the problems, no Prefect traceback."""
    bad = Path(term["tmp"]) / "bad.yaml"
    bad.write_text("campaign_id: x\nname: y\n", encoding="utf-8")
    code, _, err = finish(start(term, "run", str(bad), "--dry-run"))
    assert code == 2 and "error: brief bad.yaml has 9 problems:" in err
    assert last_line(err) == "  - approvals: required field is missing; add it"
    for noise in CRASH_NOISE:
        assert noise not in err


def test_a_dry_run_outside_expected_audience_warns_and_exits_0(term: dict[str, Any]) -> None:
    """A count of 0 against expected_audience 1,000..: exit 0 and one warning line."""
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data["audience"]["include"]["all"][2] = {"field": "country", "op": "in", "value": ["AQ"]}
    brief = brief_with(term, "nowhere.yaml", audience=data["audience"])
    code, out, err = finish(start(term, "run", str(brief), "--dry-run"))
    assert code == 0, err[-2000:]
    assert "counted:" in out
    assert last_line(err).startswith("warning: 0 send recipients is below the brief's expected_audience")


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, int(sock.getsockname()[1])


def test_a_busy_port_is_one_line(term: dict[str, Any]) -> None:
    """esp-sandbox and server start on a port something else holds: exit 8, one line."""
    sock, port = _listening()
    try:
        code, _, err = finish(start(term, "esp-sandbox", "--port", str(port)), timeout=60)
        assert_one_line(code, err, 8, f"error: the ESP sandbox cannot listen on 127.0.0.1:{port}")
        assert "--port" in last_line(err)
        code, _, err = finish(start(term, "server", "start", "--port", str(port)), timeout=60)
        assert_one_line(code, err, 8, f"error: port {port} is already in use by something that is "
                                      "not a Prefect server")
        assert "CAMPAIGNOPS_PREFECT_PORT" in last_line(err)
    finally:
        sock.close()


def test_esp_token_save_ends_with_its_own_line(term: dict[str, Any]) -> None:
    """No stray "Still processing items" after the block is saved."""
    block = f"esp-token-{int(time.time() * 1000)}"
    proc = subprocess.run([sys.executable, "-m", "campaignops.cli", "esp-token", "save", "--block", block,
                           "--stdin"], env=term["env"], input="a-token\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"ESP token saved in Secret block {block}" in proc.stdout
    assert "Still processing items" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_register_decides_an_expiry_prefect_reports_otherwise(term: dict[str, Any]) -> None:
    """The CLI maps a run the register holds expired to exit 6, whatever Prefect raised."""
    from campaignops import runs
    from campaignops.brief import Brief
    from campaignops.cli.run import outcome_of
    from campaignops.errors import ApprovalExpired

    with term["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM co_runs")).scalar_one() == 0

    class State:
        """A failed flow state whose result is Prefect's own error."""

        name, message = "Failed", "paused and never resumed"
        state_details = type("D", (), {"flow_run_id": "r-expired"})()

        def result(self, raise_on_failure: bool = False) -> BaseException:
            return RuntimeError("Flow run was paused and never resumed")

        def is_completed(self) -> bool:
            return False

    brief = Brief.model_validate(yaml.safe_load(WINBACK.read_text(encoding="utf-8")))
    runs.register_run(term["engine"], "r-expired", brief, "winback.yaml", runs.utcnow())
    runs.set_status(term["engine"], "r-expired", runs.EXPIRED)
    with pytest.raises(ApprovalExpired, match="expired; the run did not send"):
        outcome_of(State(), object)

