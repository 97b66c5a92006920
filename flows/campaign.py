"""The campaign run: intake -> segmentation -> QA -> approval wait(s) -> send handoff."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.exceptions import PausedRun
from prefect.runtime import flow_run

from campaignops.handoff import HandoffOutcome
from campaignops.intake import Intake, Mode
from campaignops.qa import QAVerdict
from campaignops.resources import open_resources
from campaignops.runs import failure_of, get_run
from campaignops.segmentation import Waterfall
from flows.approval import approve_stage
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


@flow(name="campaign-run", log_prints=False)
def campaign_run(brief_path: str, mode: Mode = "full") -> RunOutcome:
    """One campaign run; mode 'count' stops after segmentation, 'qa' after QA."""
    run_id = str(flow_run.get_id())
    open_resources()  # the warehouse, checked and migrated once, before any step
    try:
        brief = accept_brief(run_id, brief_path, mode)
        waterfall = segment_audience(run_id)
        if mode == "count":
            close_dry_run(run_id)
            publish_audit_head(run_id)
            return RunOutcome(run_id, brief, waterfall)
        qa = check_audience(run_id)
        if mode == "qa":
            close_dry_run(run_id)
            publish_audit_head(run_id)
            return RunOutcome(run_id, brief, waterfall, qa)
        check_handoff_ready(run_id)  # before anyone is asked: what the handoff will need
        for stage in brief.stages:
            approve_stage(run_id, stage)
        handoff = hand_off_audience(run_id)
        history = record_contact_history(run_id)
        publish_kpis(brief.campaign_id)
    except PausedRun:
        raise
    except Exception as exc:
        record_failure(run_id, *failure_of(exc))
        publish_audit_head(run_id)
        raise
    publish_audit_head(run_id)
    return RunOutcome(run_id, brief, waterfall, qa, handoff, history)


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
        handoff = hand_off_audience(run_id)
        history = record_contact_history(run_id)
        publish_kpis(get_run(open_resources().warehouse.engine, run_id).campaign_id)
    except Exception as exc:
        record_failure(run_id, *failure_of(exc))
        publish_audit_head(run_id)
        raise
    publish_audit_head(run_id)
    return ResumeOutcome(run_id, digest, handoff, history)
