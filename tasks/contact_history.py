"""Contact history task."""

from __future__ import annotations

from prefect import task
from prefect.events import emit_event

from campaignops import contact_history, runs
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, retry_transient, run_resource


@task(name="record-contact-history", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_contact_history(run_id: str) -> int:
    """Write contact history once per recipient of the run; announce the run finished."""
    r = open_resources()
    wh = r.warehouse
    rows = contact_history.record_contact_history(wh, r.settings, run_id)
    emit_event(event="campaignops.run.finished",
               resource=run_resource(run_id, runs.get_run(wh.engine, run_id).campaign_id),
               payload={"contact_history_rows": rows})
    return rows
