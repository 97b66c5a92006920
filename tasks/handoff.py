"""Send handoff tasks."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from campaignops import steps
from campaignops.errors import HandoffError
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


def handoff_markdown(result: dict[str, Any]) -> str:
    """The handoff artifact: batch counts (http) or the released file (file); counts only."""
    rep, rec = result["report"], result["reconciliation"]
    reconciled = "yes" if rec["matches"] else "NO"
    if result.get("mode") == "file":
        state = "released now" if rep["released"] else "already released (unchanged)"
        return (
            f"### Handoff report (file drop)\n\n| measure | value |\n|---|---:|\n"
            f"| file | `{rep['csv_path']}` |\n| manifest | `{rep['manifest']}` |\n"
            f"| rows | {rep['rows']:,} |\n| sha256 | `{rep['sha256']}` |\n"
            f"| recipients approved | {rec['approved']:,} |\n"
            f"| file QA | {'passed' if result['qa']['passed'] else 'FAILED'} "
            f"({result['qa']['checks']} checks) |\n| state | {state} |\n| reconciled | {reconciled} |\n"
        )
    return (
        f"### Handoff report\n\n| measure | value |\n|---|---:|\n"
        f"| batches | {rep['batches']} |\n| posted now | {rep['sent']} |\n"
        f"| already acknowledged (skipped) | {rep['skipped']} |\n"
        f"| recipients approved | {rec['approved']:,} |\n| accepted by ESP | {rec['accepted']:,} |\n"
        f"| rejected by ESP | {rec['rejected']:,} |\n| reconciled | {reconciled} |\n"
    )


@task(name="hand-off-audience", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def hand_off_audience(run_id: str, campaign_id: str, qa_digest: str) -> dict[str, Any]:
    """Hand the approved audience off (ESP batches or a checked file drop), then reconcile."""
    try:
        result = steps.handoff(run_id, qa_digest)
    except HandoffError as exc:
        if "mismatch" in str(exc):
            emit_event(event="campaignops.handoff.mismatch",
                       resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                                 "prefect.resource.name": campaign_id},
                       payload={"reason": str(exc)})
        raise
    create_markdown_artifact(key=artifact_key(campaign_id, "handoff"),
                             markdown=handoff_markdown(result), description="ESP handoff")
    return result


@task(name="record-contact-history", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_contact_history(run_id: str, campaign_id: str) -> dict[str, Any]:
    """Write contact history once per recipient of the run; announce the run finished."""
    result = steps.contact_history(run_id)
    emit_event(event="campaignops.run.finished",
               resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                         "prefect.resource.name": campaign_id},
               payload={"contact_history_rows": result["rows"]})
    return result


@task(name="publish-kpis", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_kpis(campaign_id: str) -> int:
    """Publish the campaign's process KPIs as a Prefect table artifact."""
    rows = steps.campaign_kpi_rows(campaign_id)
    create_table_artifact(key=artifact_key(campaign_id, "kpis"), table=rows,
                          description="process KPIs: cycle time, approval wait, defects, on-time")
    return len(rows)
