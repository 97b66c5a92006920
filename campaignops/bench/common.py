"""Shared benchmark helpers: timing and peak memory of work run in a child process."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"


def run_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run Python code in a fresh process; its last stdout line is JSON. Adds wall s and peak RSS MB.

    The code must print one JSON object on its last line. Peak memory is the child's
    own maximum resident set size (ru_maxrss), so each measurement gets a new process.
    """
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("process_wall_s", round(wall, 2))
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (call at the end of a child)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> str:
    """One line describing where the numbers were measured."""
    return (f"{platform.node() or 'machine'}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


def write_doc(name: str, title: str, body: str) -> Path:
    """Write docs/bench-<name>.md."""
    path = DOCS / f"bench-{name}.md"
    path.write_text(f"# Benchmark: {title}\n\nMeasured by `make bench` on {machine()}.\n\n{body}\n")
    return path
