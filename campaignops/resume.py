"""Going on with a run from outside its flow: a decision sent to a paused run, or a run that
failed after its approvals resumed (CLI, demo, tests).

The decision goes to Prefect as the paused run's input. Each wait has its own pause key
(``{stage}-{attempt}``), which the flow records with its judgement: that is how the
submitter learns, exactly, what became of the decision it sent to that wait.

``campaignops resume RUN`` (:func:`resume_run`) continues a run whose handoff failed after
every stage approved it (a token fixed, an ESP back up), without asking anyone again, as
long as what was approved is unchanged: every stage's signed approval must be bound to the
packet digest of the run as it stands now (brief, every recipient as it would be sent, QA).
The resumption is audited (``run / resumed``, signed like every record); the handoff then
proves the approvals again against what it stages, and its ledger makes sure nobody who
was already sent to is sent again.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from campaignops import audit, runs
from campaignops.approval import channel_proof, close_abandoned, expire_overdue
from campaignops.errors import CampaignOpsError, DecisionRefused, HandoffRefused
from campaignops.local import apply_prefect_environment
from campaignops.resources import open_resources
from campaignops.secrets import audit_key
from campaignops.settings import Settings

PAUSE_GRACE_SECONDS = 30
POLL_SECONDS = 0.5


def _wait_until_paused(run_id: str, seconds: float) -> str:
    """The pause key, once Prefect shows the run paused with its input form saved (the
    register says "waiting" a moment before Prefect does)."""
    from prefect import get_client
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            keyset = state.state_details.run_input_keyset if state is not None else None
            if state is not None and state.is_paused() and keyset and \
                    read_flow_run_input(keyset["schema"], flow_run_id=UUID(run_id)) is not None:
                return str(state.state_details.pause_key)
            if time.monotonic() > deadline:
                raise CampaignOpsError(
                    f"run {run_id} is not paused in Prefect; is PREFECT_API_URL the server the run uses?"
                )
            time.sleep(POLL_SECONDS)


def _judgement(engine: Any, run_id: str, stage: str, wait_key: str, seconds: float) -> str:
    """The action the flow audited for the decision sent to this wait, or DecisionRefused."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for rec in audit.trail(engine, run_id):
            if rec.step == f"approval:{stage}" and rec.details.get("wait_key") == wait_key:
                if rec.action == "refused":
                    raise DecisionRefused(f"refused: {rec.details.get('why')}; the run still waits")
                return rec.action
        time.sleep(POLL_SECONDS)
    raise CampaignOpsError(
        f"run {run_id} did not record the decision within {seconds:.0f} s; "
        "check it with `campaignops audit show`"
    )


def submit_decision(settings: Settings, run_id: str, name: str, stage: str | None, decision: str,
                    reason: str, key: str, via: str = "cli", wait: float = 90,
                    standing: bool = False) -> str:
    """Resume the paused run with a decision; the action the flow recorded (approved, rejected)."""
    wh = open_resources(settings).warehouse
    expire_overdue(wh)
    close_abandoned(wh)
    run = runs.get_run(wh.engine, run_id)
    if run.status != runs.AWAITING or run.waiting_stage is None:
        raise CampaignOpsError(f"run {run_id} is not waiting for approval (status {run.status})")
    if stage is not None and stage != run.waiting_stage:
        raise CampaignOpsError(f"run {run_id} waits for stage {run.waiting_stage}, not {stage}")
    if decision == "reject" and not reason.strip():
        raise CampaignOpsError("--reason is required to reject: say why")
    apply_prefect_environment(settings)
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    wait_key = _wait_until_paused(run_id, PAUSE_GRACE_SECONDS)
    # The channel is proven, not claimed: a MAC with the audit key this process holds.
    proof = channel_proof(audit_key(settings), run_id, run.waiting_stage, wait_key, name.strip(), decision)
    run_input = {"approver": name, "decision": decision, "key": key, "reason": reason,
                 "via": f"{via}:{proof}", "standing": standing}
    try:
        resume_flow_run(UUID(run_id), run_input=run_input)
    except FlowPauseTimeout:
        raise CampaignOpsError(f"run {run_id} can no longer be resumed: its wait expired") from None
    except RuntimeError as exc:  # Prefect refused the resume (e.g. the input did not validate)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CampaignOpsError(f"could not resume run {run_id}: {first}") from None
    return _judgement(wh.engine, run_id, run.waiting_stage, wait_key, wait)


def prefect_states(run_ids: list[str]) -> dict[str, str]:
    """The Prefect state type of each flow run it knows (empty when the API cannot be reached)."""
    from prefect import get_client

    out: dict[str, str] = {}
    try:
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                try:
                    state = client.read_flow_run(UUID(run_id)).state
                except Exception:  # noqa: S112 - unknown to this API: nothing to say about it
                    continue
                if state is not None:
                    out[run_id] = str(state.type.value)
    except Exception:  # the API unreachable: waits are judged by their process alone
        return {}
    return out


RESUMABLE = frozenset({runs.FAILED, runs.APPROVED, runs.HANDING_OFF})


def resume_run(wh: Any, settings: Settings, run_id: str) -> str:
    """Check that a failed run can go on with its approvals and audit that it does; the
    packet digest every stage approved. HandoffRefused (audited) when it cannot."""
    from campaignops.approval import packet_digest, signed_decisions
    from campaignops.handoff.outbox import digest_audience
    from campaignops.qa import recorded_verdict

    engine = wh.engine
    run = runs.get_run(engine, run_id)
    if run.dry_run:
        raise HandoffRefused(f"run {run_id} was a dry run: it never hands off; start a full run")
    if run.status == runs.SENT:
        raise HandoffRefused(f"run {run_id} was already sent: nothing to resume")
    if run.status not in RESUMABLE:
        raise HandoffRefused(
            f"run {run_id} is {run.status}, not a run that failed after its approvals: "
            + ("approve it with `campaignops approve`" if run.status == runs.AWAITING
               else "start a new run"))
    if audit.latest(engine, run_id, "handoff", ("mismatch",)) is not None:
        raise HandoffRefused(f"run {run_id}'s handoff did not reconcile: it is not resumed; "
                             "investigate with `campaignops audit show --full`")
    signed = signed_decisions(engine, run_id)
    missing = [s.stage for s in run.brief.approvals
               if s.stage not in signed or signed[s.stage].action != "approved"]
    if missing:
        raise HandoffRefused(f"run {run_id}: stage {', '.join(missing)} has no signed approval, so "
                             "it cannot resume without asking; start a new run")
    send_digest, _ = digest_audience(engine, run_id, run.brief)
    current = packet_digest(run.brief.digest(), send_digest, recorded_verdict(wh, run_id).qa_digest)
    approved = {str(signed[s.stage].details.get("packet_digest")) for s in run.brief.approvals}
    if approved != {current}:
        audit.append(engine, run_id=run_id, step="run", action="resume_refused", actor=runs.SYSTEM,
                     details={"why": "what was approved changed", "packet_digest": current})
        raise HandoffRefused(f"run {run_id}: what would be sent differs from what was approved "
                             "(audience, addresses, fields, brief or QA changed); start a new run")
    failed = audit.latest(engine, run_id, "run", ("failed",))
    audit.append(engine, run_id=run_id, step="run", action="resumed", actor=runs.SYSTEM, details={
        "packet_digest": current, "stages": [s.stage for s in run.brief.approvals],
        "approvals_reused": len(run.brief.approvals), "previous_status": run.status,
        "after": (failed.details.get("why") if failed is not None else None),
    })
    runs.set_status(engine, run_id, runs.APPROVED, waiting_stage=None)
    return current
