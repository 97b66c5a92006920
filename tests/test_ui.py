"""The Prefect UI of real campaign runs, seen in headless Chromium.

A real `prefect server start` with the UI on (PostgreSQL when the local server is up,
SQLite otherwise) gets two winback runs: one approved at both stages and finished, one
left paused at its QA approval. Debian's Chromium (installed here when missing) then
opens the UI as a person would and the test checks that

- the finished run's page shows the run graph and every artifact the flow publishes,
  and the waterfall and handoff artifacts show the run's own numbers;
- the paused run's page offers the approval form Prefect renders from ApprovalInput
  (approver, decision, key, reason, and a Resume button), in the default (V2) UI and
  at the V1 address Prefect's own log line links to;
- the form works: a rejection typed into it ends the paused run, the audit trail says
  it came from the UI, and the key typed in does not stay in Prefect.

Chromium is driven over the DevTools protocol with `websockets` (already installed as
Prefect's dependency): the approval form opens only on a click, which `--dump-dom`
cannot do. Screenshots go to docs/screenshots/ (embedded in docs/monitoring.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa

from campaignops.handoff.http import HttpHandoff
from flows.campaign import RunOutcome
from tests.conftest import PG_ADMIN_URL, TOKEN, _pg_available
from tests.flowkit import FlowThread, wait_for_stage

pytestmark = [pytest.mark.flow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
WINBACK = ROOT / "examples" / "briefs" / "winback.yaml"
CAMPAIGN = "winback-lapsed-customers"
# Screenshots refresh docs/screenshots/ only when asked (CAMPAIGNOPS_UPDATE_SCREENSHOTS=1), so
# `make test` leaves the tree clean; otherwise they go to a temporary folder.
SHOTS = (ROOT / "docs" / "screenshots" if os.environ.get("CAMPAIGNOPS_UPDATE_SCREENSHOTS") == "1"
         else Path(tempfile.mkdtemp(prefix="campaignops-screenshots-")))
QA_APPROVER, BUSINESS_APPROVER = "quinn.qa@example.com", "blake.director@example.com"
ARTIFACTS = ("intake", "waterfall", "qa", "approval-qa", "approval-business", "handoff", "kpis")

# Debian's Chromium on a closed network: without the background-networking flags its
# connections are refused many at a time, and every start looks up Google's hosts.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000")
WIDTH, HEIGHT = 1400, 1000


# --- Chromium: found, or installed from Debian's packages once --------------------

def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (`make test` installs it through scripts/ensure-browser when it can)."""
    found = _find_chromium()
    if not found:
        pytest.skip("NO CHROMIUM: Debian's chromium package is not installed; run "
                    "scripts/ensure-browser as root (make test does) or apt-get install -y chromium")
    return found


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, read, click, type, shoot."""

    def __init__(self, executable: str, workdir: Path) -> None:
        from websockets.sync.client import connect

        self.profile = workdir / "chromium-profile"
        self.profile.mkdir(parents=True)
        self.log = open(workdir / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        page: dict[str, Any] | None = None
        while page is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"Chromium did not start: see {workdir / 'chromium.log'}")
            try:
                port = int(port_file.read_text().split()[0])
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(t for t in targets if t["type"] == "page")
            except (OSError, ValueError, IndexError, StopIteration, httpx.HTTPError):
                time.sleep(0.2)
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=20)
        self._id = 0
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events arrive in between; keep only our answer
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def js(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"script failed: {out['exceptionDetails'].get('exception')}")
        return out["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''") or "")

    def wait_for(self, *needles: str, timeout: float = 45) -> str:
        """Wait until the page's visible text holds every needle (the SPA renders late)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"not on {self.js('location.href')}: {missing}\n{text[:3000]}")
            time.sleep(0.3)

    def click(self, element_js: str) -> None:
        """A real mouse click (pointer events and all) in the middle of the element, once it
        has stopped moving (menus and dialogs slide in)."""
        where = (f"(() => {{ const el = {element_js}; if (!el) return null;"
                 " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
                 " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        box, deadline = self.js(where), time.monotonic() + 10
        while True:
            time.sleep(0.15)
            again = self.js(where)
            if box is not None and again == box:
                break
            assert time.monotonic() < deadline, f"nothing still to click: {element_js}"
            box = again
        x, y = box
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, element_js: str, text: str) -> None:
        self.click(element_js)
        self.js(f"({element_js}).focus()")
        self.send("Input.insertText", text=text)

    def drawn(self, element_js: str, min_png_bytes: int = 25_000, timeout: float = 45) -> int:
        """Wait until a canvas (the run graph, drawn with WebGL) shows a settled picture: a
        screenshot of just its box compresses to more than a blank box would, twice alike."""
        box = self.js(f"(() => {{ const r = ({element_js}).getBoundingClientRect();"
                      " return {x: r.x, y: r.y, width: r.width, height: r.height, scale: 1}; })()")
        deadline, last = time.monotonic() + timeout, -1
        while True:
            size = len(self.send("Page.captureScreenshot", format="png", clip=box)["data"]) * 3 // 4
            if size > min_png_bytes and abs(size - last) < size // 50:
                return size
            assert time.monotonic() < deadline, f"nothing drawn in {element_js} ({size} bytes)"
            last = size
            time.sleep(1)

    def screenshot(self, path: Path) -> Path:
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 1_000_000, (path, len(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "browser")
    try:
        yield b
    finally:
        b.close()


def _by_text(text: str, selector: str = "button, [role=tab], [role=menuitem], [role=option]",
             within: str = "document") -> str:
    return (f"[...{within}.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.innerText.trim() === {json.dumps(text)})")


# --- A Prefect server with its UI -------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` with the UI on; PostgreSQL if the local one is up. Yields its base URL."""
    home = tmp_path_factory.mktemp("prefect-ui-home")
    pg_down = _pg_available()
    db_name = f"co_prefect_ui_{uuid.uuid4().hex[:8]}"
    admin = None
    if pg_down is None:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
        db_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=db_name)
        database = db_url.render_as_string(hide_password=False)
    else:
        database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
           "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": f"{base}/api",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                ui = httpx.get(f"{base}/v2/", timeout=2)
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200 and ui.status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prefect server with UI did not start: see {home / 'server.log'}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            admin.dispose()


# --- Campaign runs on that server -------------------------------------------------

def _until(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _paused_keyset(run_id: str) -> dict[str, str]:
    """Once the run is paused and its form's schema is saved: the run input keyset."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    def probe() -> dict[str, str] | None:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(UUID(run_id))
            if not (fr.state and fr.state.is_paused() and fr.state.state_details.run_input_keyset):
                return None
            keyset = dict(fr.state.state_details.run_input_keyset)
            try:
                client.read_flow_run_input(UUID(run_id), keyset["schema"])
            except ObjectNotFound:
                return None
            except PrefectHTTPStatusError as exc:  # the sync client's 404: not saved yet
                if exc.response.status_code != 404:
                    raise
                return None
            return keyset

    return dict(_until(f"run {run_id} to pause with its form", probe))


def _close_paused_run(run: FlowThread, engine: sa.Engine, run_id: str, keys: dict[str, str]) -> None:
    """Cleanup when the test failed before the UI closed the paused run: the approver of
    the stage it waits at rejects it; cancelled through the client only if that fails."""
    from campaignops import runs
    from campaignops.resume import submit_decision
    from campaignops.settings import load_settings

    for _ in range(2):
        if not run.thread.is_alive():
            return
        stage = runs.get_run(engine, run_id).waiting_stage
        who = BUSINESS_APPROVER if stage == "business" else QA_APPROVER
        with contextlib.suppress(Exception):
            submit_decision(load_settings(), run_id, who, None, "reject", "ui test cleanup",
                            keys[who], via="test", wait=30)
        run.thread.join(30)
    if run.thread.is_alive():
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(run_id), Cancelled(message="ui test cleanup"), force=True)


@pytest.fixture
def campaign_env(ui_server: str, warehouse_template: Path, sandbox: Any, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A fresh warehouse copy, the ESP sandbox, approvers, and Prefect pointed at the UI server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL, temporary_settings

    from campaignops.approvers import add_approver
    from tests.flowkit import warehouse

    wh = tmp_path / "warehouse.db"
    shutil.copy(warehouse_template, wh)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", f"sqlite:///{wh}")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    monkeypatch.setenv("PREFECT_API_URL", f"{ui_server}/api")
    monkeypatch.setenv("PREFECT_UI_URL", f"{ui_server}/v2")  # as campaignops.local sets it
    home = tmp_path / "prefect-client-home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        for worker in (APILogWorker, EventsWorker):
            with contextlib.suppress(Exception):
                worker.drain_all(timeout=10)

    with temporary_settings(updates={PREFECT_API_URL: f"{ui_server}/api", PREFECT_HOME: home,
                                     PREFECT_UI_URL: f"{ui_server}/v2"}):
        # Prefect keeps one events worker per process whatever the API URL: one made for
        # another server (the test harness) would take this server's task-run events.
        drain()
        engine = warehouse().engine
        keys = {n: add_approver(engine, n) for n in (QA_APPROVER, BUSINESS_APPROVER)}
        yield {"engine": engine, "keys": keys, "sandbox": sandbox, "base": ui_server}
        engine.dispose()
        drain()  # the runs' last logs and events, while the server is still up


def _artifacts(run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)])))
    return {str(a.key): a for a in found}


STEP = re.compile(r"-[0-9a-f]{3}$")  # Prefect's suffix of a task run named after its task only
PIPELINE = ["accept-brief", "segment-audience", "check-audience", "check-handoff-ready",
            *[f"{task}-{stage}" for stage in ("qa", "business")
              for task in ("prepare-approval", "decide-without-wait", "open-wait", "record-decision")],
            "hand-off-audience", "record-contact-history", "publish-kpis", "publish-audit-head"]


def _graph(base: str, run_id: str) -> tuple[list[str], int, list[str]]:
    """The run graph the UI draws: task runs in start order, its edges, and the orphans
    (Prefect lists a parent once per argument that came from it: an edge is a distinct pair)."""
    graph = httpx.get(f"{base}/api/flow_runs/{run_id}/graph-v2", timeout=30).json()
    nodes = sorted((n for _, n in graph["nodes"]), key=lambda n: n["start_time"])
    labels = [STEP.sub("", n["label"]) for n in nodes]
    edges = len({(e["id"], n["id"]) for n in nodes for e in n["parents"]})
    orphans = [labels[i] for i, n in enumerate(nodes) if i and not n["parents"]]
    return labels, edges, orphans


# --- The test -----------------------------------------------------------------------

def test_the_prefect_ui_shows_artifacts_and_the_approval_form(campaign_env: dict[str, Any],
                                                              browser: Browser) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from campaignops import audit, runs
    from campaignops.errors import ApprovalRejected
    from campaignops.resume import submit_decision
    from campaignops.settings import load_settings

    engine, keys, base = campaign_env["engine"], campaign_env["keys"], campaign_env["base"]

    # A run approved at both stages, to the end.
    finished = FlowThread(WINBACK)
    done_id = wait_for_stage(engine, "qa")
    for stage, who in (("qa", QA_APPROVER), ("business", BUSINESS_APPROVER)):
        wait_for_stage(engine, stage)
        # resume.submit_decision retries while Prefect does not show the pause yet, but not
        # while the form's schema is still being saved ("Run input schema not found").
        _paused_keyset(done_id)
        assert submit_decision(load_settings(), done_id, who, stage, "approve", "", keys[who],
                               via="test") == "approved"
    out = finished.result()
    assert isinstance(out, RunOutcome), out
    assert out.handoff is not None
    approved = out.handoff.approved
    recipients = out.waterfall.recipients
    artifacts = _artifacts(done_id)
    assert set(artifacts) == {f"{CAMPAIGN}-{a}" for a in ARTIFACTS} | {"campaignops-audit-head"}
    assert "Audit chain head" in str(artifacts["campaignops-audit-head"].data)

    # What the run list shows of it: its campaign and slot, its tags, where it stands.
    with get_client(sync_client=True) as client:
        done = client.read_flow_run(UUID(done_id))
    assert re.fullmatch(rf"{CAMPAIGN} \d{{4}}-\d\d-\d\d \d\d:\d\d", done.name), done.name
    assert {f"campaign:{CAMPAIGN}", "channel:email", "trigger:ad-hoc"} <= set(done.tags), done.tags
    assert not [t for t in done.tags if t.startswith("waiting:")], done.tags
    assert isinstance(out.handoff, HttpHandoff) and done.state is not None
    assert done.state.message == (
        f"sent {out.handoff.reconciliation.accepted:,} of {approved:,} recipients"), done.state
    # The run graph reads as the pipeline: its steps in order, one edge into each.
    labels, edges, orphans = _graph(base, done_id)
    assert labels == PIPELINE, labels
    assert edges == len(labels) - 1 and orphans == [], (edges, orphans)

    # A second run, left waiting at its QA approval.
    paused = FlowThread(WINBACK)
    paused_id = wait_for_stage(engine, "qa")
    try:
        keyset = _paused_keyset(paused_id)

        with get_client(sync_client=True) as client:
            assert "waiting:qa" in client.read_flow_run(UUID(paused_id)).tags

        # The run list: both runs by campaign and slot, their tags, which one waits.
        browser.goto(f"{base}/v2/runs")
        browser.wait_for(done.name, f"campaign:{CAMPAIGN}", "trigger:ad-hoc", "waiting:qa",
                         "Completed", "Paused")
        browser.screenshot(SHOTS / "run-list.png")

        # The approval packet links the QA result (and the waterfall, and Data Docs).
        packet_id = artifacts[f"{CAMPAIGN}-approval-qa"].id
        browser.goto(f"{base}/v2/artifacts/artifact/{packet_id}")
        browser.wait_for("Approval packet", "Open before deciding", "QA results", "audience waterfall",
                         "Great Expectations Data Docs")
        hrefs = browser.js("Object.fromEntries([...document.querySelectorAll('a')]"
                           ".map(a => [a.innerText.trim(), a.href]))")
        assert hrefs["QA results"] == f"{base}/v2/artifacts/artifact/{artifacts[f'{CAMPAIGN}-qa'].id}"
        assert hrefs["audience waterfall"].endswith(str(artifacts[f"{CAMPAIGN}-waterfall"].id))
        browser.screenshot(SHOTS / "approval-packet.png")
        browser.goto(hrefs["QA results"])
        browser.wait_for("QA suite", "PASSED", "checks")

        # The finished run: run graph and every artifact, on the run page's Artifacts tab.
        browser.goto(f"{base}/v2/runs/flow-run/{done_id}?tab=Artifacts")
        browser.wait_for("Completed", "Task runs", "campaign-run", "MARKDOWN", "TABLE",
                         *artifacts)
        _until("the run graph", lambda: browser.js("document.querySelectorAll('canvas').length"), 30)
        browser.drawn("document.querySelector('canvas')")  # tasks and artifacts on a time axis
        browser.screenshot(SHOTS / "finished-run-artifacts.png")

        # The waterfall and the handoff report, with this run's numbers.
        browser.goto(f"{base}/v2/artifacts/artifact/{artifacts[f'{CAMPAIGN}-waterfall'].id}")
        text = browser.wait_for("audience waterfall", "matched the brief's rules",
                                "control group (held out)", "recipients to hand off")
        assert f"{recipients:,}" in text
        browser.screenshot(SHOTS / "artifact-waterfall.png")
        browser.goto(f"{base}/v2/artifacts/artifact/{artifacts[f'{CAMPAIGN}-handoff'].id}")
        text = browser.wait_for("Handoff report", "recipients approved", "accepted by ESP",
                                "reconciled")
        assert f"{approved:,}" in text and re.search(r"reconciled\s+yes", text), text[:2000]
        browser.screenshot(SHOTS / "artifact-handoff.png")
        browser.goto(f"{base}/v2/artifacts/artifact/{artifacts[f'{CAMPAIGN}-kpis'].id}")
        browser.wait_for("process KPIs", "median approval wait", "on time", CAMPAIGN)
        browser.screenshot(SHOTS / "artifact-kpis.png")

        # The paused run at the V1 address Prefect's "View at" log line prints: the form.
        browser.goto(f"{base}/runs/flow-run/{paused_id}")
        browser.wait_for("Paused", "Resume", "Cancel")
        browser.click(_by_text("Resume"))
        text = browser.wait_for("Resume Flow Run", "Approver", "Your name exactly as the brief lists it",
                                "Decision", "approve", "reject", "Key", "Reason", "Submit")
        browser.screenshot(SHOTS / "paused-run-approval-form-v1.png")

        # The paused run in the default (V2) UI: menu -> Resume -> the form from ApprovalInput.
        browser.goto(f"{base}/v2/runs/flow-run/{paused_id}")
        browser.wait_for("Paused", "Task runs", "Open menu")
        browser.click("[...document.querySelectorAll('button')]"
                      ".find(e => e.querySelector('.sr-only')?.innerText.trim() === 'Open menu')")
        browser.wait_for("Copy ID")
        browser.click(_by_text("Resume", "[role=menuitem]"))
        dialog = "document.querySelector('[role=dialog]')"
        text = browser.wait_for("Resume Flow Run", "Provide input to resume", "Approver",
                                "Your name exactly as the brief lists it", "Decision",
                                "approve or reject this stage", "Key",
                                "Your personal approval key", "Reason", "Required when rejecting")
        fields = browser.js(f"[...{dialog}.querySelectorAll('textarea, input[type=password]')]"
                            ".map(e => e.type)")
        assert fields == ["textarea", "password", "textarea", "textarea"], fields  # key is masked
        assert browser.js(f"!!({_by_text('Resume', 'button', dialog)})"), "no Resume button"
        time.sleep(0.5)  # let the dialog's opening animation finish
        browser.screenshot(SHOTS / "paused-run-approval-form.png")

        # Fill it in as the QA approver would, rejecting, check what it holds, press Resume.
        textareas = f"{dialog}.querySelectorAll('textarea')"
        browser.type(f"{textareas}[0]", QA_APPROVER)
        browser.js(f"{_by_text('Select', 'button', dialog)}.dataset.co = 'decision'")
        decision = "document.querySelector('[data-co=decision]')"
        for _ in range(3):  # the option list slides in; check the choice took
            browser.click(decision)
            browser.click(_by_text("reject", "[role=option]"))
            if _until("the decision", lambda: browser.js(f"{decision}.innerText.trim()"), 5) == "reject":
                break
            if browser.js("!!document.querySelector('[role=option]')"):  # list still open
                browser.send("Input.dispatchKeyEvent", type="keyDown", key="Escape")
        browser.type(f"{dialog}.querySelector('input[type=password]')", keys[QA_APPROVER])
        browser.type(f"{textareas}[1]", "closed from the Prefect UI")
        filled = browser.js(f"[[...{textareas}].map(e => e.value), {decision}.innerText.trim(),"
                            f" {dialog}.querySelector('input[type=password]').value.length]")
        assert filled == [[QA_APPROVER, "closed from the Prefect UI", "ui"], "reject",
                          len(keys[QA_APPROVER])], filled
        browser.click(_by_text("Resume", "button", dialog))
        err = paused.result(timeout=60)
        assert isinstance(err, ApprovalRejected) and "closed from the Prefect UI" in str(err), err
    finally:
        _close_paused_run(paused, engine, paused_id, keys)

    assert runs.get_run(engine, paused_id).status == runs.REJECTED
    decided = [r for r in audit.trail(engine, paused_id) if r.step == "approval:qa"
               and r.action == "rejected"]
    # where it came from, as observed (the UI's form cannot prove more) beside what it claimed
    assert [(r.actor, r.details["via"], r.details["claimed_via"], r.details["reason"])
            for r in decided] == [(QA_APPROVER, "ui-or-api", "ui", "closed from the Prefect UI")]
    # The key typed into the form does not stay in Prefect's database.
    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError, match="404"):
        client.read_flow_run_input(UUID(paused_id), keyset["response"])
    assert campaign_env["sandbox"].deliveries(CAMPAIGN, paused_id) == {}
    with get_client(sync_client=True) as client:
        ended = client.read_flow_run(UUID(paused_id))
    assert not [t for t in ended.tags if t.startswith("waiting:")], ended.tags

    # Data Docs with the network off (every http(s) request blocked): styled by the shipped assets.
    assert out.qa is not None and out.qa.data_docs
    browser.send("Network.enable")
    browser.send("Network.setBlockedURLs", urls=["http://*", "https://*"])
    browser.goto(Path(out.qa.data_docs).resolve().as_uri())
    browser.wait_for("Validation Results", "Expectation Suites", timeout=30)
    # bootstrap's CSS (the navbar a flex box, its font stack) and bootstrap-table's script
    # (which wraps the results table) both came from the site's own static/vendor/
    styled = _until("Data Docs styled", lambda: browser.js(
        "getComputedStyle(document.body).fontFamily.includes('Segoe UI') && "
        "getComputedStyle(document.querySelector('.navbar')).display === 'flex' && "
        "!!document.querySelector('.bootstrap-table')"), 30)
    assert styled
    browser.screenshot(SHOTS / "data-docs.png")
