"""On a real Prefect server: a scoring's event starts the MQL brief's deployment; a repeat sends nobody twice.

`prefect deploy` reads the trigger from deployments/prefect.yaml; `campaignops lifecycle score`
runs the lifecycle-scoring flow, whose `campaignops.lifecycle.transitioned` event for stage mql
makes Prefect's automation create a run of `campaign-run/mql-nurture` with the deployment's
parameters. The runs' audiences (segmented by the campaign's own steps) show each new MQL in
exactly one of them however often the event fires. No worker executes the runs here: the
handoff and its approvals are tested elsewhere (tests/test_flow.py, tests/test_handoff.py).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from campaignops.brief import load_brief
from campaignops.schema import customers, engagement_events
from tests.factories import customer
from tests.test_lifecycle_trigger import _run, _sent
from tests.test_serve import on_server, pg_prefect_server

pytestmark = [pytest.mark.flow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]
NEW_MQLS = list(range(9_000_001, 9_000_006))
__all__ = ["on_server", "pg_prefect_server"]  # the real server and warehouse copy of tests/test_serve.py


@pytest.fixture
def env(on_server: Path, pg_prefect_server: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The subprocess environment: the real server, the warehouse copy, with five would-be MQLs."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    engine = sa.create_engine(f"sqlite:///{on_server}")
    with engine.begin() as conn:  # 35 fit points and three forms filled in today: MQLs by the default model
        conn.execute(sa.insert(customers), [customer(c, lifetime_value=Decimal(600), last_purchase_at=None,
                                                     lifecycle_stage="lead") for c in NEW_MQLS])
        engagement_events.create(conn)
        conn.execute(sa.insert(engagement_events), [
            {"customer_id": c, "event_type": "form_submit", "occurred_at": now - dt.timedelta(minutes=m)}
            for c in NEW_MQLS for m in (1, 2, 3)])
    engine.dispose()
    yield {**os.environ, "PREFECT_API_URL": pg_prefect_server, "CAMPAIGNOPS_PROJECT_DIR": str(ROOT),
           "CAMPAIGNOPS_HOME": str(tmp_path / "home"), "CAMPAIGNOPS_WAREHOUSE_URL": f"sqlite:///{on_server}"}


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout[-800:]} {proc.stderr[-800:]}"
    return proc.stdout


def _triggered_runs(n: int, timeout: float = 120) -> list[Any]:
    """The flow runs of campaign-run/mql-nurture, oldest first, once there are at least n."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_flow_runs(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["mql-nurture"])), sort=FlowRunSort.START_TIME_ASC)
            if len(found) >= n or time.monotonic() > deadline:
                return sorted(found, key=lambda r: r.created)
            time.sleep(1)


def test_a_scoring_event_triggers_the_mql_brief_and_a_repeat_reaches_nobody_again(
        env: dict[str, str], on_server: Path) -> None:
    from campaignops.warehouse import open_warehouse

    prefect = [sys.executable, "-m", "prefect"]
    _cli(env, *prefect[1:], "work-pool", "create", "campaigns", "--type", "process", "--overwrite")
    _cli(env, *prefect[1:], "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
         "--name", "mql-nurture")
    time.sleep(2)  # let the trigger service load the deployment's automation
    out = _cli(env, "-m", "campaignops.cli", "lifecycle", "score")
    assert f"{len(NEW_MQLS)} entered mql" in out, out
    (first,) = _triggered_runs(1)
    assert first.parameters["brief_path"] == "examples/briefs/mql-nurture.yaml"
    assert first.parameters["mode"] == "full"
    # The event again, twice (as a retry or a duplicate delivery would): more runs, nobody twice.
    code = ("from prefect.events import emit_event\n"
            "for _ in range(2):\n"
            "    emit_event(event='campaignops.lifecycle.transitioned', resource={"
            "'prefect.resource.id': 'campaignops.lifecycle.stage.mql'}, payload={'stage': 'mql', 'count': 5})\n")
    _cli(env, "-c", code)
    runs_seen = _triggered_runs(3)
    assert len(runs_seen) >= 2  # Prefect may collapse identical events (PrefectHQ/prefect #11199)
    brief = load_brief(ROOT / first.parameters["brief_path"])
    wh = open_warehouse(f"sqlite:///{on_server}")
    try:
        reached = _run(wh, brief, str(first.id))
        assert reached == set(NEW_MQLS)  # the warehouse's own customers have no events: no other MQL
        _sent(wh, brief, str(first.id))
        for later in runs_seen[1:]:
            assert _run(wh, brief, str(later.id)) == set()
    finally:
        wh.dispose()
