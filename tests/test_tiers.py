"""The test tiers: every test carries one, so `-m unit`, `-m flow` and `-m integration` together
select the whole suite; a test without a tier fails collection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def _collect(folder: Path, body: str) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (folder / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    unit: u\n    flow: f\n    integration: i\n")
    (folder / "test_sample.py").write_text(body)
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                           "no:cacheprovider", str(folder)], capture_output=True, text=True,
                          cwd=folder, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=120)


def test_an_unmarked_test_fails_collection(tmp_path: Path) -> None:
    proc = _collect(tmp_path, "import pytest\n\ndef test_a():\n    pass\n\n"
                              "@pytest.mark.unit\ndef test_b():\n    pass\n")
    assert proc.returncode != 0
    assert "1 test(s) carry no tier marker" in proc.stdout + proc.stderr
    assert "test_sample.py::test_a" in proc.stdout + proc.stderr


def test_marked_tests_collect(tmp_path: Path) -> None:
    proc = _collect(tmp_path, "import pytest\n\npytestmark = pytest.mark.flow\n\n"
                              "def test_a():\n    pass\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 test collected" in proc.stdout


def test_the_tiers_together_select_every_test() -> None:
    def count(*args: str) -> int:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=300).stdout
        return sum(1 for line in out.splitlines() if "::" in line)

    everything = count()
    assert everything > 400
    assert count("-m", "unit or flow or integration") == everything
    assert count("-m", "not unit and not flow and not integration") == 0
