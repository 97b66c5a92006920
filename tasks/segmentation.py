"""Segmentation task."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS

from campaignops import steps
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


@task(name="segment-audience", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_policy=INPUTS, persist_result=True)
def segment_audience(run_id: str) -> dict[str, Any]:
    """Materialise the run's audience in the warehouse (co_audience) and count the waterfall."""
    result = steps.segmentation(run_id)
    create_markdown_artifact(key=artifact_key(result["campaign_id"], "waterfall"),
                             markdown=result.pop("markdown"), description="audience waterfall")
    return result
