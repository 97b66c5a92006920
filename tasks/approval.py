"""Approval tasks: the packet, the wait's start, standing approvals, decisions, expiry."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.events import emit_event

from campaignops import steps
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


@task(name="prepare-approval", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_policy=INPUTS, persist_result=True)
def prepare_approval(run_id: str, campaign_id: str, stage: str, qa: dict[str, Any],
                     waterfall: dict[str, Any]) -> dict[str, Any]:
    """Publish the approval packet: waterfall, QA, cells and offers, masked samples, digest."""
    packet = steps.approval_packet(run_id, stage, qa, waterfall)
    create_markdown_artifact(key=artifact_key(campaign_id, f"approval-{stage}"),
                             markdown=packet.pop("markdown"), description=f"approval packet: {stage}")
    return packet


@task(name="try-standing-approval", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def try_standing_approval(run_id: str, stage: str, qa: dict[str, Any], packet_digest: str) -> str | None:
    """Approve with the campaign's standing approval when QA is clean and the size in tolerance."""
    return steps.use_standing_approval(run_id, stage, qa, packet_digest)


@task(name="open-wait", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def open_wait(run_id: str, campaign_id: str, stage: str, packet_digest: str) -> dict[str, Any]:
    """Mark the run as waiting for a stage and announce it (campaignops.approval.pending)."""
    wait = steps.open_wait(run_id, stage, packet_digest)
    emit_event(
        event="campaignops.approval.pending",
        resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                  "prefect.resource.name": campaign_id},
        payload={"stage": stage, "since": wait["since"], "deadline": wait["deadline"]},
    )
    return wait


@task(name="record-decision", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_decision(run_id: str, stage: str, approver: str, decision: str, reason: str,
                    key: str, via: str, packet_digest: str, standing: bool = False) -> tuple[bool, str | None]:
    """Judge a submitted decision against the approval rules and audit it."""
    accepted, why = steps.judge_decision(run_id, stage, approver, decision, reason, key, via,
                                         packet_digest, standing)
    if accepted:
        emit_event(event="campaignops.approval.decided",
                   resource={"prefect.resource.id": f"campaignops.run.{run_id}"},
                   payload={"stage": stage, "decision": decision})
    return accepted, why
