"""The campaign run: intake -> segmentation -> QA -> approval wait(s) -> send handoff."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import delete_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import deployment, flow_run
from pydantic import Field, SecretStr

from campaignops import runs, steps
from campaignops.errors import ApprovalRejected, CampaignOpsError
from tasks import (
    accept_brief,
    check_audience,
    hand_off_audience,
    open_wait,
    prepare_approval,
    publish_kpis,
    record_contact_history,
    record_decision,
    segment_audience,
    try_standing_approval,
)

Mode = Literal["full", "qa", "count"]
POLL_SECONDS = 2


class ApprovalInput(RunInput):
    """The form an approver fills in the Prefect UI (or the CLI sends)."""

    approver: str = Field(description="Your name exactly as the brief lists it")
    decision: Literal["approve", "reject"] = Field(description="approve or reject this stage")
    key: SecretStr = Field(description="Your personal approval key (campaignops approvers add)")
    reason: str = Field(default="", description="Required when rejecting")
    standing: bool = Field(
        default=False,
        description="Also grant a standing approval for later runs of this recurring campaign",
    )
    via: str = Field(default="ui", description="where the decision came from")


def wait_for_approval(run_id: str, stage: str, packet: dict[str, Any], wait: dict[str, Any]) -> None:
    """Wait until a valid decision for the stage arrives; refuse invalid ones and wait on.

    An ad hoc run pauses (its process polls); a deployment run suspends (no process
    waits, and the flow replays from the top on resume: cached tasks come back at once,
    decided stages are skipped, and each wait has its own key).
    """
    logger = get_run_logger()
    deadline = dt.datetime.fromisoformat(wait["deadline"])
    suspend = deployment.get_id() is not None
    attempt = steps.next_attempt(run_id, stage)
    while True:
        remaining = int((deadline - runs.utcnow()).total_seconds())
        if remaining < 1:
            steps.expire(run_id, stage)
            raise ApprovalRejected(f"approval wait for stage {stage} expired; the run did not send")
        pause_key = f"{stage}-{attempt}"
        try:
            if suspend:
                answer = suspend_flow_run(wait_for_input=ApprovalInput, timeout=remaining, key=pause_key)
            else:
                answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=remaining,
                                        poll_interval=POLL_SECONDS, key=pause_key)
        except FlowPauseTimeout:
            # Prefect has already failed the run on the server: record why, directly.
            steps.expire(run_id, stage)
            raise ApprovalRejected(
                f"approval wait for stage {stage} expired; the run did not send"
            ) from None
        # The submitted key must not stay in Prefect's database.
        state_name = "suspended" if suspend else "paused"
        delete_flow_run_input(keyset_from_base_key(f"{state_name}-{pause_key}")["response"])
        assert answer is not None
        accepted, why = record_decision(
            run_id, stage, answer.approver, answer.decision, answer.reason,
            answer.key.get_secret_value(), answer.via, packet["packet_digest"], answer.standing,
        )
        if not accepted:
            logger.warning("decision for stage %s refused: %s; still waiting", stage, why)
            attempt += 1
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(f"stage {stage} rejected by {answer.approver}: {answer.reason}")
        logger.info("stage %s approved", stage)
        return


def approve_stage(run_id: str, campaign_id: str, stage: str, qa: dict[str, Any],
                  waterfall: dict[str, Any]) -> None:
    """One approval stage: packet, then a decision already given, a standing approval, or a wait."""
    packet = prepare_approval(run_id, campaign_id, stage, qa, waterfall)
    prior = steps.prior_decision(run_id, stage)
    if prior is not None:  # a replayed (resumed) run reaches a stage already decided
        if prior["decision"] == "reject":
            raise ApprovalRejected(f"stage {stage} rejected by {prior['approver']}: {prior['reason']}")
        return
    if try_standing_approval(run_id, stage, qa, packet["packet_digest"]):
        return
    wait = open_wait(run_id, campaign_id, stage, packet["packet_digest"])
    wait_for_approval(run_id, stage, packet, wait)


@flow(name="campaign-run", log_prints=False)
def campaign_run(brief_path: str, mode: Mode = "full") -> dict[str, Any]:
    """One campaign run; mode 'count' stops after segmentation, 'qa' after QA."""
    run_id = str(flow_run.get_id())
    try:
        brief = accept_brief(run_id, brief_path, mode)
        campaign_id = brief["campaign_id"]
        waterfall = segment_audience(run_id)
        if mode == "count":
            steps.finish_dry_run(run_id)
            return {"run_id": run_id, "waterfall": waterfall}
        qa = check_audience(run_id, campaign_id)
        if mode == "qa":
            steps.finish_dry_run(run_id)
            return {"run_id": run_id, "waterfall": waterfall, "qa": qa}
        for stage in brief["stages"]:
            approve_stage(run_id, campaign_id, stage, qa, waterfall)
        handoff = hand_off_audience(run_id, campaign_id, qa["qa_digest"])
        history = record_contact_history(run_id, campaign_id)
        publish_kpis(campaign_id)
    except CampaignOpsError as exc:
        steps.fail(run_id, str(exc).splitlines()[0])
        raise
    return {"run_id": run_id, "waterfall": waterfall, "qa": qa, "handoff": handoff,
            "contact_history": history}
