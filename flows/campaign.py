"""The campaign run: intake -> segmentation -> QA -> approval wait(s) -> send handoff."""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.input.actions import delete_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import flow_run
from pydantic import Field, SecretStr

from campaignops import steps
from campaignops.errors import ApprovalRejected, CampaignOpsError
from tasks import (
    accept_brief,
    check_audience,
    hand_off_audience,
    prepare_approval,
    record_contact_history,
    record_decision,
    record_expiry,
    segment_audience,
)

Mode = Literal["full", "qa", "count"]
POLL_SECONDS = 2


class ApprovalInput(RunInput):
    """The form an approver fills in the Prefect UI (or the CLI sends)."""

    approver: str = Field(description="Your name exactly as the brief lists it")
    decision: Literal["approve", "reject"] = Field(description="approve or reject this stage")
    key: SecretStr = Field(description="Your personal approval key (campaignops approvers add)")
    reason: str = Field(default="", description="Required when rejecting")
    via: str = Field(default="ui", description="where the decision came from")


def wait_for_approval(run_id: str, campaign_id: str, stage: str, packet: dict[str, Any]) -> None:
    """Pause until a valid decision for the stage arrives; refuse invalid ones and wait on."""
    logger = get_run_logger()
    deadline = time.monotonic() + packet["timeout_hours"] * 3600
    attempt = 0
    while True:
        attempt += 1
        remaining = int(deadline - time.monotonic())
        if remaining < 1:
            record_expiry(run_id, stage)
            raise ApprovalRejected(f"approval wait for stage {stage} expired; the run did not send")
        pause_key = f"{stage}-{attempt}"
        try:
            answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=remaining,
                                    poll_interval=POLL_SECONDS, key=pause_key)
        except FlowPauseTimeout:
            record_expiry(run_id, stage)
            raise ApprovalRejected(
                f"approval wait for stage {stage} expired; the run did not send"
            ) from None
        # The submitted key must not stay in Prefect's database.
        delete_flow_run_input(keyset_from_base_key(f"paused-{pause_key}")["response"])
        assert answer is not None
        accepted, why = record_decision(
            run_id, stage, answer.approver, answer.decision, answer.reason,
            answer.key.get_secret_value(), answer.via, packet["packet_digest"],
        )
        if not accepted:
            logger.warning("decision for stage %s refused: %s; still waiting", stage, why)
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(f"stage {stage} rejected by {answer.approver}: {answer.reason}")
        logger.info("stage %s approved", stage)
        return


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
            packet = prepare_approval(run_id, campaign_id, stage, qa, waterfall)
            wait_for_approval(run_id, campaign_id, stage, packet)
        handoff = hand_off_audience(run_id, campaign_id, qa["qa_digest"])
        history = record_contact_history(run_id)
    except CampaignOpsError as exc:
        steps.fail(run_id, str(exc).splitlines()[0])
        raise
    return {"run_id": run_id, "waterfall": waterfall, "qa": qa, "handoff": handoff,
            "contact_history": history}
