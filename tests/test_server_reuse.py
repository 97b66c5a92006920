"""Commands reuse one local Prefect server: the first that needs it starts it and says so (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme_walk import ROOT, free_port

pytestmark = pytest.mark.flow

STARTED = "started the local Prefect server at"


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["campaignops", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"campaignops {' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}"
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_first_command_starts_the_server_and_the_next_reuse_it(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMPAIGNOPS_", "PREFECT_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                "CAMPAIGNOPS_PREFECT_PORT": str(free_port()),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    pidfile = tmp_path / ".campaignops" / "run" / "prefect-server.pid"
    try:
        _cli(tmp_path, env, "warehouse", "init", "--customers", "3000", "--seed", "7")
        _cli(tmp_path, env, "audit", "init-key")
        assert not pidfile.exists()  # a command that needs no Prefect starts nothing
        first = _cli(tmp_path, env, "run", "examples/briefs/winback.yaml", "--dry-run")
        assert STARTED in first.stderr and "campaignops server stop" in first.stderr
        assert "counted:" in first.stdout + first.stderr
        pid = int(pidfile.read_text())
        assert _alive(pid)
        second = _cli(tmp_path, env, "run", "examples/briefs/winback.yaml", "--dry-run")
        assert STARTED not in second.stderr and "counted:" in second.stdout + second.stderr
        assert int(pidfile.read_text()) == pid and _alive(pid)
        temporary = _cli(tmp_path, {**env, "CAMPAIGNOPS_PREFECT_SERVER": "temporary",
                                    "CAMPAIGNOPS_PREFECT_PORT": str(free_port())},
                         "run", "examples/briefs/winback.yaml", "--dry-run")
        assert STARTED not in temporary.stderr and int(pidfile.read_text()) == pid
    finally:
        subprocess.run(["campaignops", "server", "stop"], cwd=tmp_path, env=env, timeout=60,
                       capture_output=True, check=False)
    assert not pidfile.exists() or not _alive(int(pidfile.read_text()))
