"""Preflight task: the handoff's needs checked before the first approval wait."""

from __future__ import annotations

from prefect import task

from campaignops import preflight
from campaignops.preflight import Preflight
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, retry_transient, step_key


@task(name="check-handoff-ready", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=step_key, persist_result=True)
def check_handoff_ready(run_id: str) -> Preflight:
    """ESP reachable with the token (or the drop folder writable), send time not stale."""
    r = open_resources()
    return preflight.check_handoff_ready(r.warehouse, r.settings, run_id)
