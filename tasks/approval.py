"""Approval tasks: the packet before a wait, the decision after it."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from campaignops import steps
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


@task(name="prepare-approval", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def prepare_approval(run_id: str, campaign_id: str, stage: str, qa: dict[str, Any],
                     waterfall: dict[str, Any]) -> dict[str, Any]:
    """Publish the approval packet and announce the wait."""
    packet = steps.approval_packet(run_id, stage, qa, waterfall)
    create_markdown_artifact(key=artifact_key(campaign_id, f"approval-{stage}"),
                             markdown=packet.pop("markdown"), description=f"approval packet: {stage}")
    emit_event(
        event="campaignops.approval.pending",
        resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                  "prefect.resource.name": campaign_id},
        payload={"stage": stage, "since": packet["since"]},
    )
    return packet


@task(name="record-decision", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_decision(run_id: str, stage: str, approver: str, decision: str, reason: str,
                    key: str, via: str, packet_digest: str) -> tuple[bool, str | None]:
    """Judge a submitted decision against the approval rules and audit it."""
    return steps.judge_decision(run_id, stage, approver, decision, reason, key, via, packet_digest)


@task(name="record-expiry")
def record_expiry(run_id: str, stage: str) -> None:
    """Expire a run whose approval wait timed out."""
    steps.expire(run_id, stage)
