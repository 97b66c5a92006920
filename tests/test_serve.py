"""Deployments served against a real Prefect server backed by the local PostgreSQL:
a schedule really fires and its run completes, and an ad hoc run of the flow completes.

Guards against the SQLAlchemy 2.1 failure mode (Prefect's scheduler silently stops
while ad hoc runs still work). The test harness's ephemeral server runs no
scheduler, so this tier starts a real `prefect server start`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import scratch_database

pytestmark = [pytest.mark.flow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a scratch PostgreSQL database; yields its API URL."""
    with scratch_database("co_prefect") as url:
        yield from _serve_on(url.set(drivername="postgresql+asyncpg"), tmp_path_factory)


def _serve_on(db_url: sa.engine.URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-server-home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url.render_as_string(hide_password=False),
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"Prefect server did not start: see {home / 'server.log'}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture
def on_server(pg_prefect_server: str, warehouse_template: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point Prefect and campaignops at the real server and a fresh warehouse copy."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wh = tmp_path / "warehouse.db"
    shutil.copy(warehouse_template, wh)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", f"sqlite:///{wh}")
    monkeypatch.setenv("PREFECT_API_URL", pg_prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: pg_prefect_server}):
        yield wh


def _statuses(wh: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{wh}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status FROM co_runs")).scalars().all()
    engine.dispose()
    return list(rows)


def test_a_served_schedule_fires_and_its_run_completes(on_server: Path, pg_prefect_server: str,
                                                      tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    env = {**os.environ, "PREFECT_API_URL": pg_prefect_server, "CAMPAIGNOPS_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignops.cli", "serve", "--only", "weekly-newsletter",
             "--every", "5", "--dry-run"], env=env, stdout=out, stderr=subprocess.STDOUT)
        completed: list[Any] = []
        try:
            deadline = time.monotonic() + 300
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline and not completed and proc.poll() is None:
                    flow_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["weekly-newsletter"])))
                    completed = [r for r in flow_runs
                                 if r.state and r.state.is_completed() and r.auto_scheduled]
                    time.sleep(1)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert completed, f"no scheduled run completed (scheduler not running?): {log.read_text()[-500:]}"
    assert "counted" in _statuses(on_server)


def test_an_ad_hoc_run_completes_on_the_postgresql_backed_server(on_server: Path) -> None:
    from flows.campaign import RunOutcome, campaign_run

    root = Path(__file__).resolve().parents[1]
    out = campaign_run(brief_path=str(root / "examples" / "briefs" / "winback.yaml"), mode="count")
    assert isinstance(out, RunOutcome)  # the flow's final state carries the outcome
    assert out.waterfall.recipients > 1000
    assert _statuses(on_server) == ["counted"]


def test_automations_call_the_alert_webhook(on_server: Path, pg_prefect_server: str) -> None:
    """QA failure fires at once; an undecided approval escalates after its window."""
    import datetime as dt
    import http.server
    import json
    import threading

    from campaignops.automations import install

    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        names = install(f"http://127.0.0.1:{server.server_address[1]}/hook", dt.timedelta(seconds=10))
        from campaignops.automations import RULES

        assert len(names) == len(RULES)
        assert install(f"http://127.0.0.1:{server.server_address[1]}/hook",
                       dt.timedelta(seconds=10)) == names  # idempotent: replaced, not doubled
        time.sleep(2)  # let the trigger service load the automations
        # Emitted from a fresh process, as flow runs do: this process's events worker may
        # already be bound to another test server.
        code = ("from prefect.events import emit_event\n"
                "emit_event(event='campaignops.qa.failed', resource={'prefect.resource.id': 'campaignops.run.t1'})\n"
                "emit_event(event='campaignops.approval.pending', resource={'prefect.resource.id': 'campaignops.run.t2'})\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                       env={**os.environ, "PREFECT_API_URL": pg_prefect_server})
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len({r.get("automation") for r in received}) < 2:
            time.sleep(1)
    finally:
        server.shutdown()
        server.server_close()
    fired = {r.get("automation") for r in received}
    assert "campaignops: qa failed" in fired
    assert "campaignops: approval waiting too long" in fired


def test_production_shape_deploy_work_pool_worker(on_server: Path, pg_prefect_server: str,
                                                 tmp_path: Path) -> None:
    """`prefect deploy` from deployments/prefect.yaml, a process work pool, `prefect deployment
    run`, and a worker executing the run: the production shape, here on loopback."""
    from prefect.client.orchestration import get_client

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PREFECT_API_URL": pg_prefect_server, "CAMPAIGNOPS_PROJECT_DIR": str(root),
           "CAMPAIGNOPS_HOME": str(tmp_path / "home"), "CAMPAIGNOPS_ESP_URL": "http://127.0.0.1:9",
           "CAMPAIGNOPS_ESP_TOKEN": "unused-in-count-mode"}

    def prefect(*args: str, timeout: float = 120) -> str:
        proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=root,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"prefect {' '.join(args)}: {proc.stdout[-800:]} {proc.stderr[-800:]}"
        return proc.stdout

    prefect("work-pool", "create", "campaigns", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    out = prefect("deployment", "run", "campaign-run/winback-lapsed-customers",
                  "--param", "mode=count")
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    prefect("worker", "start", "--pool", "campaigns", "--run-once", timeout=240)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    assert state is not None and state.is_completed(), state
    assert "counted" in _statuses(on_server)


def test_a_deployment_run_suspends_at_each_wait_and_replays_on_resume(
        on_server: Path, pg_prefect_server: str, tmp_path: Path, sandbox: Any) -> None:
    """From a deployment the approval wait suspends (no process waits); each resume reruns the
    flow from the top, finished steps come back cached and decided stages are skipped."""
    from prefect.client.orchestration import get_client

    from campaignops import audit
    from campaignops.approvers import add_approver
    from campaignops.resume import submit_decision
    from campaignops.settings import load_settings
    from campaignops.warehouse import make_engine
    from tests.conftest import TOKEN

    root = Path(__file__).resolve().parents[1]
    engine = make_engine(f"sqlite:///{on_server}")
    from campaignops import migrations

    migrations.upgrade(engine)
    keys = {n: add_approver(engine, n) for n in ("quinn.qa@example.com", "blake.director@example.com")}
    env = {**os.environ, "PREFECT_API_URL": pg_prefect_server, "CAMPAIGNOPS_PROJECT_DIR": str(root),
           "CAMPAIGNOPS_HOME": str(tmp_path / "home"), "CAMPAIGNOPS_ESP_URL": sandbox.url,
           "CAMPAIGNOPS_ESP_TOKEN": TOKEN}

    def prefect(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=root,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"prefect {' '.join(args)}: {proc.stdout[-800:]} {proc.stderr[-800:]}"
        return proc.stdout

    prefect("work-pool", "create", "campaigns", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    out = prefect("deployment", "run", "campaign-run/winback-lapsed-customers")
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "campaigns",
                               "--prefetch-seconds", "5"], env=env, cwd=root, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        for stage, approver in (("qa", "quinn.qa@example.com"), ("business", "blake.director@example.com")):
            deadline = time.monotonic() + 240
            state_name = ""
            while time.monotonic() < deadline:
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(uuid.UUID(flow_run_id)).state
                state_name = str(state.name) if state else ""
                waiting = [r for r in audit.trail(engine, flow_run_id)
                           if r.step == f"approval:{stage}" and r.action == "waiting"]
                if waiting and state_name == "Suspended":
                    break
                time.sleep(1)
            assert state_name == "Suspended", f"stage {stage}: run is {state_name}"
            assert submit_decision(load_settings(), flow_run_id, approver, stage, "approve", "",
                                   keys[approver], via="test", wait=240) == "approved"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(uuid.UUID(flow_run_id)).state
            if state is not None and state.is_final():
                break
            time.sleep(1)
        assert state is not None and state.is_completed(), state
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
    trail = [(r.step, r.action) for r in audit.trail(engine, flow_run_id)]
    assert trail.count(("segmentation", "materialised")) == 1, "a replay re-ran a cached step"
    assert trail.count(("approval:qa", "approved")) == 1 and trail[-1] == ("contact_history", "written")
    delivered = sandbox.deliveries("winback-lapsed-customers", flow_run_id)
    assert delivered and set(delivered.values()) == {1}
    engine.dispose()
