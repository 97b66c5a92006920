"""Approval tasks: the packet, standing approvals, the wait's start, decisions."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import deployment

from campaignops import approval, runs
from campaignops.approval import Judgement, Packet, Wait
from campaignops.resources import open_resources
from tasks.common import (
    RETRY_DELAYS,
    TASK_RETRIES,
    artifact_key,
    retry_transient,
    run_resource,
    step_key,
)
from tasks.labels import artifact_links, mark_waiting
from tasks.markdown import packet_markdown


@task(name="prepare-approval", task_run_name="prepare-approval-{stage}",
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=step_key, persist_result=True)
def prepare_approval(run_id: str, stage: str) -> Packet:
    """Publish the approval packet: waterfall, QA, cells and offers, masked samples, digest."""
    packet = approval.prepare_approval(open_resources().warehouse, run_id, stage)
    keys = {what: artifact_key(packet.campaign_id, what) for what in ("qa", "waterfall")}
    found = artifact_links(run_id, list(keys.values()))
    links = {what: found[key] for what, key in keys.items() if key in found}
    create_markdown_artifact(key=artifact_key(packet.campaign_id, f"approval-{stage}"),
                             markdown=packet_markdown(packet, links), description=f"approval packet: {stage}")
    return packet


@task(name="decide-without-wait", task_run_name="decide-without-wait-{stage}",
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def decide_without_wait(run_id: str, stage: str, packet_digest: str) -> str | None:
    """An earlier decision (a replay) or a standing approval decides the stage; None: ask a person."""
    return approval.decide_without_wait(open_resources().warehouse, run_id, stage, packet_digest)


@task(name="open-wait", task_run_name="open-wait-{stage}",
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def open_wait(run_id: str, stage: str, packet_digest: str) -> Wait:
    """Mark the run as waiting for a stage and announce it (campaignops.approval.pending)."""
    wh = open_resources().warehouse
    # an ad hoc run pauses in this process; a deployment run suspends (no process waits)
    wait = approval.open_wait(wh, run_id, stage, packet_digest, in_process=deployment.get_id() is None)
    emit_event(
        event="campaignops.approval.pending",
        resource=run_resource(run_id, runs.get_run(wh.engine, run_id).campaign_id),
        payload={"stage": stage, "since": wait.since.isoformat(), "deadline": wait.deadline.isoformat()},
    )
    mark_waiting(run_id, stage)
    return wait


@task(name="record-decision", task_run_name="record-decision-{stage}",
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_decision(run_id: str, stage: str, approver: str, decision: str, reason: str,
                    key: str, via: str, packet_digest: str, standing: bool = False,
                    wait_key: str = "") -> Judgement:
    """Judge a submitted decision against the approval rules and audit it."""
    judged = approval.record_decision(open_resources().warehouse, run_id, stage, approver, decision,
                                      reason, key, via, packet_digest, standing, wait_key)
    if judged.accepted:
        mark_waiting(run_id, None)
        emit_event(event="campaignops.approval.decided", resource=run_resource(run_id),
                   payload={"stage": stage, "decision": decision})
    return judged


@task(name="expire-wait", task_run_name="expire-wait-{stage}",
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def expire_wait(run_id: str, stage: str) -> None:
    """Record that the stage's wait ran past its deadline; the run ends without sending."""
    raise approval.expire(open_resources().warehouse, run_id, stage)
