"""docs/architecture.md matches the code: every step's task, logic and tests, and every table."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from campaignops.schema import project_metadata, warehouse_metadata

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
STEP_ROW = re.compile(r"^\| (\w+) \| `([\w/]+\.py):(\w+)` \| `([\w-]+)` \| `([\w/]+\.py):(\w+)` \| `([\w/]+\.py)` \|$",
                      re.M)


def _module(path: str) -> object:
    name = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return importlib.import_module(name)


def test_every_step_row_names_what_exists() -> None:
    rows = STEP_ROW.findall(DOC)
    assert len(rows) >= 10
    for step, task_file, task_fn, prefect_name, logic_file, logic_fn, tests in rows:
        task = getattr(_module(task_file), task_fn)
        assert task.name == prefect_name, (step, task_fn)
        assert callable(getattr(_module(logic_file), logic_fn)), (step, logic_fn)
        assert (ROOT / tests).is_file(), tests
        assert task_file == f"tasks/{step}.py", f"{task_fn}: a step's task lives in tasks/{step}.py"


def test_every_task_of_the_flow_is_in_the_table() -> None:
    import tasks

    named = {fn for _, _, fn, *_ in STEP_ROW.findall(DOC)}
    assert set(tasks.__all__) == named


def test_every_table_named_exists_and_every_own_table_is_named() -> None:
    mentioned = set(re.findall(r"`(co_\w+)`", DOC))
    ours = {t.name for t in project_metadata.sorted_tables} | {"co_alembic_version"}
    assert mentioned == ours
    for table in warehouse_metadata.tables:
        assert f"`{table}`" in DOC


def test_every_module_named_exists() -> None:
    for path in set(re.findall(r"`((?:campaignops|tasks|flows)/[\w/]+(?:\.py|/))`", DOC)):
        assert (ROOT / path).exists(), path
