"""Driving campaign runs from a test: a flow in a thread, and waiting for its approval stage."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops import runs

WINBACK = Path(__file__).resolve().parents[1] / "examples" / "briefs" / "winback.yaml"
WINBACK_APPROVERS = {"qa": "quinn.qa@example.com", "business": "blake.director@example.com"}


class FlowThread:
    """Runs the campaign flow in a thread, like a worker would, so the test can approve."""

    def __init__(self, brief: Path, mode: str = "full") -> None:
        from flows.campaign import campaign_run

        self.state: Any = None

        def run() -> None:
            self.state = campaign_run(brief_path=str(brief), mode=mode, return_state=True)

        # In the caller's context: its Prefect settings (the server under test) go along.
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(run,),
                                       daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not finish"
        return self.state.result(raise_on_failure=False)


def wait_for_stage(engine: sa.Engine, stage: str, timeout: float = 90) -> str:
    """The id of a run waiting for the stage (fails after timeout seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in runs.waiting_runs(engine):
            if r.waiting_stage == stage:
                return r.run_id
        time.sleep(0.3)
    raise AssertionError(f"no run waited for stage {stage}")


def warehouse() -> Any:
    """The warehouse of the settings in force (as the flow's tasks open it)."""
    from campaignops.resources import open_resources

    return open_resources().warehouse


def hand_off(run_id: str) -> Any:
    """The handoff step, as its task runs it, for the settings in force."""
    from campaignops.handoff import hand_off_audience
    from campaignops.settings import load_settings

    return hand_off_audience(warehouse(), load_settings(), run_id)


def record_history(run_id: str) -> int:
    """The contact-history step; the rows written."""
    from campaignops.contact_history import record_contact_history
    from campaignops.settings import load_settings

    return record_contact_history(warehouse(), load_settings(), run_id)


def approved_run(keys: dict[str, str], brief: Path = WINBACK,
                 incident_id: str | None = None) -> tuple[str, str]:
    """A run taken through intake, segmentation, QA and every approval by plain steps, no flow
    (a correction of the incident when given): (run id, QA digest). keys: each stage's
    approver (WINBACK_APPROVERS) -> their key."""
    from campaignops import approval, qa
    from campaignops.brief import load_brief
    from campaignops.intake import accept_brief
    from campaignops.segmentation import segment_audience
    from campaignops.settings import load_settings

    wh = warehouse()
    run_id = str(uuid.uuid4())
    accept_brief(wh, run_id, str(brief), "full", incident_id)
    segment_audience(wh, run_id)
    verdict, _ = qa.check_audience(wh, run_id, load_settings().home)
    for stage in (s.stage for s in load_brief(brief).approvals):
        packet = approval.prepare_approval(wh, run_id, stage)
        name = WINBACK_APPROVERS[stage]
        judged = approval.record_decision(wh, run_id, stage, name, "approve", "", keys[name],
                                          "test", packet.packet_digest)
        assert judged.accepted, judged.why
    return run_id, verdict.qa_digest
