"""Send handoff task."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from campaignops import handoff, runs
from campaignops.errors import HandoffMismatch
from campaignops.handoff import HandoffOutcome, UnprovenApproval
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient, run_resource
from tasks.markdown import handoff_markdown


@task(name="hand-off-audience", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def hand_off_audience(run_id: str) -> HandoffOutcome:
    """Hand the approved audience off (ESP batches or a checked file drop), then reconcile."""
    r = open_resources()
    campaign_id = runs.get_run(r.warehouse.engine, run_id).campaign_id
    try:
        out = handoff.hand_off_audience(r.warehouse, r.settings, run_id)
    except HandoffMismatch as exc:
        emit_event(event="campaignops.handoff.mismatch", resource=run_resource(run_id, campaign_id),
                   payload={"reason": str(exc)})
        raise
    except UnprovenApproval as exc:
        emit_event(event="campaignops.handoff.refused", resource=run_resource(run_id, campaign_id),
                   payload={"reason": str(exc), "ignored_approval_rows": exc.ignored_rows})
        if exc.ignored_rows:
            emit_event(event="campaignops.approval.forged", resource=run_resource(run_id, campaign_id),
                       payload={"ignored_approval_rows": exc.ignored_rows})
        raise
    create_markdown_artifact(key=artifact_key(campaign_id, "handoff"),
                             markdown=handoff_markdown(out), description="ESP handoff")
    return out
