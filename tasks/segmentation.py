"""Segmentation task."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from campaignops import segmentation
from campaignops.resources import open_resources
from campaignops.segmentation import Waterfall
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient, step_key
from tasks.markdown import waterfall_markdown


@task(name="segment-audience", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=step_key, persist_result=True)
def segment_audience(run_id: str) -> Waterfall:
    """Materialise the run's audience in the warehouse (co_audience) and count the waterfall."""
    wf = segmentation.segment_audience(open_resources().warehouse, run_id)
    create_markdown_artifact(key=artifact_key(wf.campaign_id, "waterfall"),
                             markdown=waterfall_markdown(wf), description="audience waterfall")
    return wf
