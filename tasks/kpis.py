"""Process KPIs task."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from campaignops import runs
from campaignops.kpis import campaign_kpis, kpi_table_rows
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient


@task(name="publish-kpis", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_kpis(run_id: str) -> int:
    """Publish the run's campaign's process KPIs as a Prefect table artifact; the rows published."""
    engine = open_resources().warehouse.engine
    campaign_id = runs.get_run(engine, run_id).campaign_id
    rows = kpi_table_rows(campaign_kpis(engine, campaign_id=campaign_id))
    create_table_artifact(key=artifact_key(campaign_id, "kpis"), table=rows,
                          description="process KPIs: cycle time, approval wait, defects, on-time")
    return len(rows)
