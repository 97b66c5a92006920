"""QA expectation suite task."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from campaignops import qa, runs, watch
from campaignops.errors import QAFailed
from campaignops.qa import QAResult, QAVerdict
from campaignops.resources import open_resources
from tasks.common import (
    RETRY_DELAYS,
    TASK_RETRIES,
    artifact_key,
    retry_transient,
    run_resource,
    step_key,
)
from tasks.markdown import qa_markdown
from tasks.watch import publish_watch


def _publish(campaign_id: str, result: QAResult) -> None:
    create_markdown_artifact(key=artifact_key(campaign_id, "qa"), markdown=qa_markdown(result),
                             description="QA expectation results")


@task(name="check-audience", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=step_key, persist_result=True)
def check_audience(run_id: str) -> QAVerdict:
    """Validate the audience with the Great Expectations suite; a critical failure blocks the run."""
    r = open_resources()
    campaign_id = runs.get_run(r.warehouse.engine, run_id).campaign_id
    try:
        verdict, result = qa.check_audience(r.warehouse, run_id, r.settings.home)
    except QAFailed as exc:
        if isinstance(exc.result, QAResult):
            _publish(campaign_id, exc.result)
        emit_event(event="campaignops.qa.failed", resource=run_resource(run_id, campaign_id),
                   payload={"reason": str(exc)})
        raise
    if verdict.drifted:
        emit_event(event="campaignops.drift", resource=run_resource(run_id, campaign_id),
                   payload={"check": qa.DRIFT_CHECK})
    _publish(campaign_id, result)
    if watch.PSI_CHECK in verdict.applied:  # compared with a previous sent run
        publish_watch(campaign_id)  # the campaign's watch table and chart; the event if it moved
    return verdict
