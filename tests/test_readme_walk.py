"""README's "Everyday commands", run line by line in order on a fresh home: each succeeds and
prints its key line, so the README cannot drift from the code (issue 21, point 7)."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaignops.errors import ApprovalRejected

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PREFECT_PORT, SANDBOX_PORT = "4200", "8765"

# The key line each command prints (a substring of its output), by the command's first words.
# A README command with no entry here fails the walk: add what it should print.
EXPECT: list[tuple[str, str]] = [
    ("campaignops --help", "Usage:"),
    ("campaignops warehouse init", "warehouse ready at"),
    ("campaignops audit init-key", "audit signing key written to"),
    ("campaignops warehouse upgrade", "campaignops' tables "),
    ("campaignops brief check --count", "send recipients now: "),
    ("campaignops run examples/briefs/winback.yaml --dry-run", "counted:"),
    ("campaignops qa", ": QA passed"),
    ("campaignops server start", "Prefect server started"),
    ("campaignops esp-sandbox", "ESP sandbox listening on http://127.0.0.1:"),
    ("export CAMPAIGNOPS_ESP_TOKEN=", ""),
    ("campaignops approvers add", "shown once"),
    ("campaignops approvers list", "2 approver(s)"),
    ("campaignops run examples/briefs/winback.yaml --handoff file", "handoff: file "),
    ("campaignops run examples/briefs/winback.yaml", "reconciled: yes"),
    ("campaignops run examples/briefs/weekly-newsletter.yaml", "waits for stage business"),
    ("campaignops approvals", "winback-lapsed-customers"),
    ("campaignops approve", ": approved by "),
    ("campaignops audit show RUN --full", '"reconciliation"'),
    ("campaignops audit show", "contact_history"),
    ("campaignops audit verify", "audit chain intact"),
    ("campaignops revoke", "revoked 1 standing approval(s) of weekly-newsletter"),
    ("campaignops reject", ": rejected by blake.director@example.com"),
    ("campaignops esp-token save", "ESP token saved in Secret block esp-token"),
    ("campaignops esp-token check", "ESP token: from CAMPAIGNOPS_ESP_TOKEN"),
    ("campaignops kpis", "winback-lapsed-customers"),
    ("campaignops calendar", "Campaign calendar"),
    ("campaignops server stop", "stopped: prefect-server"),
]


def everyday_commands() -> list[str]:
    """The command lines of README's "Everyday commands" block, comments stripped."""
    section = README.split("## Everyday commands", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).strip()
        if line:
            lines.append(line)
    return lines


KEY_PREFIX = "CAMPAIGNOPS_APPROVER_KEY=... "


def expected(line: str) -> str:
    """The key line of a README command (the longest matching entry)."""
    line = line.removeprefix(KEY_PREFIX)
    found = [(k, v) for k, v in EXPECT if line.startswith(k)]
    assert found, f"README command without an expected line in EXPECT: {line}"
    return max(found, key=lambda kv: len(kv[0]))[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Walk:
    """A terminal on a fresh home, with what earlier commands printed."""

    cwd: Path
    env: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    background: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def engine(self) -> sa.Engine:
        return sa.create_engine(f"sqlite:///{self.cwd / '.campaignops' / 'warehouse.db'}")

    def run_id(self) -> str:
        """RUN: the run waiting for approval now, else the newest run."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                waiting = conn.execute(sa.text(
                    "SELECT run_id FROM co_runs WHERE status = 'awaiting_approval' "
                    "ORDER BY created_at DESC LIMIT 1")).scalar()
                newest = conn.execute(sa.text(
                    "SELECT run_id FROM co_runs ORDER BY created_at DESC LIMIT 1")).scalar()
        finally:
            engine.dispose()
        assert waiting or newest, "RUN used before any run exists"
        return str(waiting or newest)

    def wait_until_waiting(self, seconds: float = 240) -> None:
        """Until a background run waits for an approval (or has ended)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not any(p.poll() is None for _, p in self.runs()):
                return
            engine = self.engine()
            try:
                with engine.connect() as conn:
                    if conn.execute(sa.text("SELECT COUNT(*) FROM co_runs WHERE status = "
                                            "'awaiting_approval'")).scalar_one():
                        time.sleep(2)  # Prefect marks the run paused just after the register
                        return
            except sa.exc.OperationalError:
                pass
            finally:
                engine.dispose()
            time.sleep(0.5)
        raise AssertionError("no run came to wait for an approval")

    def runs(self) -> list[tuple[str, subprocess.Popen[str]]]:
        return [(line, p) for line, p in self.background if " run " in f" {line} "]

    def finish_runs(self, timeout: float = 300) -> None:
        """Every background `run` that ended: its exit and key line checked."""
        for line, proc in self.runs():
            if proc.poll() is None:
                continue
            out, err = proc.communicate(timeout=timeout)
            self.background.remove((line, proc))
            key = expected(line)
            if "weekly-newsletter" in line and proc.returncode == ApprovalRejected.exit_code:
                # the README's reject ends it: one line, no traceback
                assert "Traceback" not in err, err[-2000:]
                assert err.strip().splitlines()[-1].startswith("error: stage business rejected"), err[-1500:]
                continue
            assert proc.returncode == 0, f"{line}: exit {proc.returncode}\n{err[-3000:]}"
            assert key in out + err, f"{line}: {key!r} not in output\n{(out + err)[-3000:]}"


@pytest.mark.flow
def test_the_readme_walks(tmp_path: Path) -> None:
    """Every command of "Everyday commands", in order, on a fresh home."""
    lines = everyday_commands()
    assert len(lines) >= 25 and lines[0] == "campaignops --help"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    prefect_port, sandbox_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CAMPAIGNOPS_", "PREFECT_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                "CAMPAIGNOPS_PREFECT_PORT": str(prefect_port),
                "CAMPAIGNOPS_ESP_URL": f"http://127.0.0.1:{sandbox_port}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    walk = Walk(tmp_path, env)
    try:
        for line in lines:
            _step(walk, line, prefect_port, sandbox_port)
        assert not walk.runs(), [line for line, _ in walk.runs()]
    finally:
        for _, proc in walk.background:
            proc.terminate()
            proc.wait(30)
        subprocess.run(["campaignops", "server", "stop"], cwd=tmp_path, env=env, timeout=60,
                       capture_output=True, check=False)


def _step(walk: Walk, line: str, prefect_port: int, sandbox_port: int) -> None:
    """One README line: substituted, run (or started), its key line checked."""
    key = expected(line)
    if walk.runs():  # a run started above: this is the second terminal, once it waits
        walk.wait_until_waiting()
    cmd = line.replace(f"--port {PREFECT_PORT}", f"--port {prefect_port}")
    cmd = cmd.replace(f"--port {SANDBOX_PORT}", f"--port {sandbox_port}")
    if "RUN" in shlex.split(cmd):
        cmd = re.sub(r"\bRUN\b", walk.run_id(), cmd)
    if cmd.startswith(KEY_PREFIX):
        name = cmd.split("--as ", 1)[1].split()[0]
        cmd = cmd.replace("CAMPAIGNOPS_APPROVER_KEY=...", f"CAMPAIGNOPS_APPROVER_KEY={walk.keys[name]}")
    if cmd.startswith("export "):
        name = cmd.split()[1].split("=", 1)[0]
        value = subprocess.run(["bash", "-c", f"{cmd} && printf %s \"${name}\""], cwd=walk.cwd,
                               env=walk.env, capture_output=True, text=True, timeout=30)
        assert value.returncode == 0 and value.stdout, (line, value.stderr)
        walk.env[name] = value.stdout
        return
    if cmd.endswith("&"):
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd[:-1].strip()}"], cwd=walk.cwd, env=walk.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        walk.background.append((line, proc))
        _wait_for_port(sandbox_port, proc)
        return
    is_run = re.match(r"campaignops run \S+( --handoff \w+)?$", cmd) is not None
    if is_run:  # waits for approvals: a second terminal goes on
        walk.finish_runs()
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=walk.cwd, env=walk.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        walk.background.append((line, proc))
        return
    done = subprocess.run(["bash", "-c", cmd], cwd=walk.cwd, env=walk.env, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{line}: exit {done.returncode}\n{output[-3000:]}"
    assert key in output, f"{line}: {key!r} not in output\n{output[-3000:]}"
    if cmd.startswith("campaignops approvers add"):
        name = cmd.split()[-1]
        walk.keys[name] = done.stdout.splitlines()[1].strip()
    if re.search(r"campaignops (approve|reject) ", cmd):
        time.sleep(1)
        _settle(walk)


def _settle(walk: Walk, seconds: float = 300) -> None:
    """After a decision: until the background run waits again or ends; check the ended ones."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        live = [p for _, p in walk.runs() if p.poll() is None]
        engine = walk.engine()
        try:
            with engine.connect() as conn:
                waiting = conn.execute(sa.text("SELECT COUNT(*) FROM co_runs WHERE status = "
                                               "'awaiting_approval'")).scalar_one()
        finally:
            engine.dispose()
        if not live or waiting:
            break
        time.sleep(0.5)
    walk.finish_runs()


def _wait_for_port(port: int, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.unit
def test_every_readme_command_has_a_key_line_and_every_key_line_a_command() -> None:
    """The walk's expectations and README's block name the same commands."""
    lines = everyday_commands()
    for line in lines:
        expected(line)
    unused = [k for k, _ in EXPECT if not any(line.removeprefix(KEY_PREFIX).startswith(k)
                                              for line in lines)]
    assert unused == []
