"""The approval wait as its own unit: one stage's packet, then a decision without a person or a wait.

An ad hoc run pauses (its process polls); a deployment run suspends (no process waits,
and the flow replays from the top on resume: cached tasks come back at once, decided
stages are skipped, and each wait has its own key). A refused decision is audited and the
wait goes on; a wait past its deadline expires the run.
"""

from __future__ import annotations

from typing import Literal, cast

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import delete_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import deployment, flow_run
from prefect.settings import get_current_settings
from prefect.utilities.annotations import opaque, quote
from prefect.utilities.urls import url_for
from pydantic import Field, SecretStr

from campaignops.approval import Judgement, Wait, waiting_message
from campaignops.errors import ApprovalRejected
from campaignops.runs import utcnow
from tasks import decide_without_wait, expire_wait, open_wait, prepare_approval, record_decision

POLL_SECONDS = 2


class ApprovalInput(RunInput):
    """The form an approver fills in the Prefect UI (or the CLI sends)."""

    approver: str = Field(description="Your name exactly as the brief lists it")
    decision: Literal["approve", "reject"] = Field(description="approve or reject this stage")
    key: SecretStr = Field(description="Your personal approval key (campaignops approvers add). "
                                       "Only the V2 UI (/v2) masks it: in the V1 UI use "
                                       "`campaignops approve` instead")
    reason: str = Field(default="", description="Required when rejecting")
    standing: bool = Field(
        default=False,
        description="Also grant a standing approval for later runs of this recurring campaign",
    )
    via: str = Field(default="ui", description="where the decision came from")


def this_run() -> str:
    """This run's id, a new string at each call.

    Prefect links every object a task returns to that task and draws a graph edge wherever
    a linked object is passed on: one id string handed to every step (and kept in their
    results) would tie each step to whichever returned it last. Edges come from wait_for.
    """
    return str(flow_run.get_id())


def after(step_result: object) -> list[object]:
    """``wait_for`` of a step that follows another: one graph edge from it, nothing traced inside.

    Prefect would otherwise walk into the result and draw an edge from every earlier step
    whose returned objects it finds there (a shared empty tuple, a cached string).
    """
    return [opaque(step_result)]


def untraced(value: str) -> str:
    """A task argument Prefect hands over as it is and draws no graph edge from.

    A form's values are pydantic's cached strings: "approve" at the QA stage is the same
    object as at the business stage, which Prefect would take for the earlier result.
    """
    return cast(str, quote(value))


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


def wait_for_decision(run_id: str, wait: Wait) -> Judgement:
    """Wait until a valid decision for the stage arrives; refuse invalid ones and wait on."""
    logger = get_run_logger()
    attempt = wait.attempt
    link = url_for("flow-run", obj_id=run_id) if get_current_settings().ui_url else None
    logger.info(waiting_message(run_id, wait.stage, wait.approvers, wait.deadline, link))
    while True:
        remaining = int((wait.deadline - utcnow()).total_seconds())
        if remaining < 1:
            expire_wait(run_id, wait.stage)
        key = f"{wait.stage}-{attempt}"
        try:
            answer = _ask(key, remaining)
        except FlowPauseTimeout:  # Prefect has failed the run on the server: record why
            expire_wait(run_id, wait.stage)
        judged = record_decision(this_run(), wait.stage, untraced(answer.approver),
                                 untraced(answer.decision), untraced(answer.reason),
                                 untraced(answer.key.get_secret_value()), untraced(answer.via),
                                 wait.packet_digest, answer.standing, key, wait_for=after(wait))
        if not judged.accepted:
            logger.warning("decision for stage %s refused: %s; still waiting", wait.stage, judged.why)
            attempt += 1
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(f"stage {wait.stage} rejected by {answer.approver}: {answer.reason}")
        logger.info("stage %s approved", wait.stage)
        return judged


def approve_stage(run_id: str, stage: str, previous: object = None) -> object:
    """One approval stage: the packet, then an earlier or standing decision, or a person's.

    ``previous``: the result of the step before (the graph's edge); returns the stage's last result.
    """
    packet = prepare_approval(this_run(), stage, wait_for=after(previous))
    if decide_without_wait(this_run(), stage, packet.packet_digest, wait_for=after(packet)) is not None:
        return packet
    wait = open_wait(this_run(), stage, packet.packet_digest, wait_for=after(packet))
    return wait_for_decision(run_id, wait)
