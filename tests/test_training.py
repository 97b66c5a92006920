"""docs/training.md: every sh block of the walkthrough runs, in order, and succeeds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.flow
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "training.md"


def blocks() -> list[str]:
    """The walkthrough's sh blocks, in order."""
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_walkthrough_has_every_stage() -> None:
    text = "\n".join(blocks())
    for command in ("warehouse init", "sandbox create", "sandbox check", "--dry-run", "campaignops qa",
                    "campaignops approve", "audit show"):
        assert command in text


def test_the_walkthrough_runs(tmp_path: Path, prefect_api: str) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNOPS_")}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
                "PREFECT_API_URL": prefect_api})
    script = "set -euo pipefail\n" + "\n".join(blocks())
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "sandbox ready" in out and "sandbox check: passed" in out
    assert "QA passed" in out and "approved by blake.director@example.com" in out
    assert "handoff: file" in out and "sandbox=True" in out
