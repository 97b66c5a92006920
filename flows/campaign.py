"""The campaign run: intake -> segmentation -> QA -> approval wait(s) -> send handoff."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.exceptions import PausedRun
from prefect.runtime import flow_run
from prefect.states import Completed

from campaignops.handoff import HandoffOutcome
from campaignops.intake import Intake, Mode
from campaignops.qa import QAVerdict
from campaignops.resources import open_resources
from campaignops.runlabels import finished_message, provisional_name
from campaignops.runs import failure_of
from campaignops.segmentation import Waterfall
from flows.approval import after, approve_stage, this_run
from tasks import (
    accept_brief,
    check_audience,
    check_handoff_ready,
    close_dry_run,
    hand_off_audience,
    publish_audit_head,
    publish_kpis,
    record_contact_history,
    record_failure,
    resume_run,
    segment_audience,
)


@dataclass(frozen=True)
class RunOutcome:
    """What a campaign run did, step by step (counts only)."""

    run_id: str
    intake: Intake
    waterfall: Waterfall
    qa: QAVerdict | None = None
    handoff: HandoffOutcome | None = None
    contact_history: int | None = None


def _provisional_name() -> str:
    """The run's name until intake names it for its campaign."""
    return provisional_name(str(flow_run.parameters.get("brief_path", "")), flow_run.scheduled_start_time)


@flow(name="campaign-run", flow_run_name=_provisional_name, log_prints=False)
def campaign_run(brief_path: str, mode: Mode = "full",
                 incident_id: str | None = None) -> State[RunOutcome]:
    """One campaign run; mode 'count' stops after segmentation, 'qa' after QA; with an
    incident, a correction of it (`campaignops remediate`).

    Each step waits for the one before (``wait_for``), so the run graph is the pipeline in
    order; the final state's message says what the run did.
    """
    open_resources()  # the warehouse, checked and migrated once, before any step
    try:
        brief = accept_brief(this_run(), brief_path, mode, incident_id)
        waterfall = segment_audience(this_run(), wait_for=after(brief))
        if mode == "count":
            close_dry_run(this_run(), wait_for=after(waterfall))
            publish_audit_head(this_run(), wait_for=after(waterfall))
            return _finished(RunOutcome(this_run(), brief, waterfall), mode)
        qa = check_audience(this_run(), wait_for=after(waterfall))
        if mode == "qa":
            close_dry_run(this_run(), wait_for=after(qa))
            publish_audit_head(this_run(), wait_for=after(qa))
            return _finished(RunOutcome(this_run(), brief, waterfall, qa), mode)
        # before anyone is asked: what the handoff will need
        approved: object = check_handoff_ready(this_run(), wait_for=after(qa))
        for stage in brief.stages:
            approved = approve_stage(this_run(), stage, previous=approved)
        handoff = hand_off_audience(this_run(), wait_for=after(approved))
        history = record_contact_history(this_run(), wait_for=after(handoff))
        publish_kpis(this_run(), wait_for=after(handoff))
    except PausedRun:
        raise
    except Exception as exc:
        record_failure(this_run(), *failure_of(exc))
        publish_audit_head(this_run())
        raise
    publish_audit_head(this_run(), wait_for=after(handoff))
    return _finished(RunOutcome(this_run(), brief, waterfall, qa, handoff, history), mode)


def _finished(outcome: RunOutcome, mode: Mode) -> State[RunOutcome]:
    """The run's final state, its message saying where it stands (sent N, or a dry run's count)."""
    return Completed(message=finished_message(outcome.waterfall, outcome.handoff, mode), data=outcome)


@dataclass(frozen=True)
class ResumeOutcome:
    """What resuming a run did: the approvals it kept, the handoff, contact history."""

    run_id: str
    packet_digest: str
    handoff: HandoffOutcome
    contact_history: int


@flow(name="campaign-resume", log_prints=False)
def campaign_resume(run_id: str) -> ResumeOutcome:
    """Go on with a run that failed after its approvals: the handoff and what follows it,
    without asking again while what was approved is unchanged."""
    open_resources()
    digest = resume_run(run_id)  # refuses (audited) without touching a run that cannot go on
    try:
        handoff = hand_off_audience(run_id, wait_for=after(digest))
        history = record_contact_history(run_id, wait_for=after(handoff))
        publish_kpis(run_id, wait_for=after(handoff))
    except Exception as exc:
        record_failure(run_id, *failure_of(exc))
        publish_audit_head(run_id)
        raise
    publish_audit_head(run_id, wait_for=after(history))
    return ResumeOutcome(run_id, digest, handoff, history)
