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


def approved_run(keys: dict[str, str], brief: Path = WINBACK) -> tuple[str, str]:
    """A run taken through intake, segmentation, QA and every approval by plain steps, no flow:
    (run id, QA digest). keys: each stage's approver (WINBACK_APPROVERS) -> their key."""
    from campaignops import steps
    from campaignops.brief import load_brief

    run_id = str(uuid.uuid4())
    steps.intake(run_id, str(brief))
    waterfall = steps.segmentation(run_id)
    qa = steps.quality(run_id)
    for stage in (s.stage for s in load_brief(brief).approvals):
        packet = steps.approval_packet(run_id, stage, qa, waterfall)
        name = WINBACK_APPROVERS[stage]
        accepted, why = steps.judge_decision(run_id, stage, name, "approve", "", keys[name],
                                             "test", packet["packet_digest"])
        assert accepted, why
    return run_id, qa["qa_digest"]
