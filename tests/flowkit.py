"""Driving campaign runs from a test: a flow in a thread, and waiting for its approval stage."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops import runs


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
