"""The approval wait as its own unit: one stage's packet, then a decision without a person or a wait.

An ad hoc run pauses (its process polls); a deployment run suspends (no process waits,
and the flow replays from the top on resume: cached tasks come back at once, decided
stages are skipped, and each wait has its own key). A refused decision is audited and the
wait goes on; a wait past its deadline expires the run.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import delete_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import deployment
from prefect.settings import get_current_settings
from pydantic import Field, SecretStr

from campaignops.approval import Wait, waiting_message
from campaignops.errors import ApprovalRejected
from campaignops.runs import utcnow
from tasks import decide_without_wait, expire_wait, open_wait, prepare_approval, record_decision

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


def _ask(key: str, remaining: int) -> ApprovalInput:
    """Pause (ad hoc) or suspend (deployment) under ``key`` until an approver submits the form."""
    if deployment.get_id() is not None:
        answer = suspend_flow_run(wait_for_input=ApprovalInput, timeout=remaining, key=key)
        state = "suspended"
    else:
        answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=remaining,
                                poll_interval=POLL_SECONDS, key=key)
        state = "paused"
    # The submitted key must not stay in Prefect's database.
    delete_flow_run_input(keyset_from_base_key(f"{state}-{key}")["response"])
    assert answer is not None
    return answer


def wait_for_decision(run_id: str, wait: Wait, packet_digest: str) -> None:
    """Wait until a valid decision for the stage arrives; refuse invalid ones and wait on."""
    logger = get_run_logger()
    attempt = wait.attempt
    logger.info(waiting_message(run_id, wait.stage, wait.approvers, wait.deadline,
                                get_current_settings().ui_url))
    while True:
        remaining = int((wait.deadline - utcnow()).total_seconds())
        if remaining < 1:
            expire_wait(run_id, wait.stage)
        key = f"{wait.stage}-{attempt}"
        try:
            answer = _ask(key, remaining)
        except FlowPauseTimeout:  # Prefect has failed the run on the server: record why
            expire_wait(run_id, wait.stage)
        judged = record_decision(run_id, wait.stage, answer.approver, answer.decision, answer.reason,
                                 answer.key.get_secret_value(), answer.via, packet_digest,
                                 answer.standing, key)
        if not judged.accepted:
            logger.warning("decision for stage %s refused: %s; still waiting", wait.stage, judged.why)
            attempt += 1
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(f"stage {wait.stage} rejected by {answer.approver}: {answer.reason}")
        logger.info("stage %s approved", wait.stage)
        return


def approve_stage(run_id: str, stage: str) -> None:
    """One approval stage: the packet, then an earlier or standing decision, or a person's."""
    packet = prepare_approval(run_id, stage)
    if decide_without_wait(run_id, stage, packet.packet_digest) is not None:
        return
    wait = open_wait(run_id, stage, packet.packet_digest)
    wait_for_decision(run_id, wait, packet.packet_digest)
