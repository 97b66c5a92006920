"""QA expectation suite task."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.events import emit_event

from campaignops import steps
from campaignops.errors import QAFailed
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


@task(name="check-audience", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_policy=INPUTS, persist_result=True)
def check_audience(run_id: str, campaign_id: str) -> dict[str, Any]:
    """Validate the audience with the Great Expectations suite; a critical failure blocks the run."""
    try:
        result = steps.quality(run_id)
    except QAFailed as exc:
        emit_event(
            event="campaignops.qa.failed",
            resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                      "prefect.resource.name": campaign_id},
            payload={"reason": str(exc)},
        )
        raise
    if steps.DRIFT_CHECK in result["warnings"]:
        emit_event(
            event="campaignops.drift",
            resource={"prefect.resource.id": f"campaignops.run.{run_id}",
                      "prefect.resource.name": campaign_id},
            payload={"check": steps.DRIFT_CHECK},
        )
    create_markdown_artifact(key=artifact_key(campaign_id, "qa"), markdown=result.pop("markdown"),
                             description="QA expectation results")
    return result
