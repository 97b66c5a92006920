"""Submitting an approval decision to a paused run from outside the flow (CLI, demo)."""

from __future__ import annotations

import time
from uuid import UUID

from campaignops import audit, runs
from campaignops.errors import CampaignOpsError
from campaignops.local import apply_prefect_environment
from campaignops.settings import Settings

PAUSE_GRACE_SECONDS = 30


def submit_decision(settings: Settings, run_id: str, name: str, stage: str | None, decision: str,
                    reason: str, key: str, via: str = "cli", wait: float = 90,
                    standing: bool = False) -> str:
    """Resume the paused run with a decision; wait until the flow has judged it."""
    from campaignops.steps import expire_overdue, warehouse

    engine = warehouse(settings)
    expire_overdue(engine)
    run = runs.get_run(engine, run_id)
    if run.status != runs.AWAITING:
        raise CampaignOpsError(f"run {run_id} is not waiting for approval (status {run.status})")
    if stage is not None and stage != run.waiting_stage:
        raise CampaignOpsError(f"run {run_id} waits for stage {run.waiting_stage}, not {stage}")
    if decision == "reject" and not reason.strip():
        raise CampaignOpsError("--reason is required to reject: say why")
    before = len(audit.trail(engine, run_id))
    apply_prefect_environment(settings)
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    run_input = {"approver": name, "decision": decision, "key": key, "reason": reason, "via": via,
                 "standing": standing}
    # The register says "waiting" a moment before Prefect shows the pause: retry briefly.
    deadline = time.monotonic() + PAUSE_GRACE_SECONDS
    while True:
        try:
            resume_flow_run(UUID(run_id), run_input=run_input)
            break
        except Exception as exc:
            # The register says "waiting" a moment before Prefect shows the pause and has
            # saved the form's schema: both are worth a short retry, nothing else is.
            transient = isinstance(exc, NotPausedError) or "schema not found" in str(exc).lower()
            if not transient:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise CampaignOpsError(
                    f"could not resume run {run_id} in Prefect ({type(exc).__name__}: {first}); "
                    "is PREFECT_API_URL the server the run uses?"
                ) from None
            if time.monotonic() > deadline:
                raise CampaignOpsError(
                    f"run {run_id} is not paused in Prefect; is PREFECT_API_URL the server the run uses?"
                ) from None
            time.sleep(0.5)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for rec in audit.trail(engine, run_id)[before:]:
            if rec.step == f"approval:{run.waiting_stage}" and rec.action != "waiting":
                if rec.action == "refused":
                    raise CampaignOpsError(f"refused: {rec.details.get('why')}; the run still waits")
                return rec.action
        time.sleep(0.5)
    raise CampaignOpsError(
        f"run {run_id} did not record the decision within {wait:.0f} s; "
        "check it with `campaignops audit show`"
    )
