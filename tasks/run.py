"""How a run ends when it does not send: a dry run closed, a failure recorded."""

from __future__ import annotations

from prefect import task

from campaignops import runs
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, retry_transient
from tasks.labels import mark_waiting


@task(name="close-dry-run", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def close_dry_run(run_id: str) -> None:
    """Close a run that only counted or only checked (status counted, audited)."""
    runs.close_dry_run(open_resources().warehouse.engine, run_id)


@task(name="record-failure", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def record_failure(run_id: str, status: str, why: str) -> str | None:
    """Record why the run ended without sending (status and audit); the status it ends in."""
    mark_waiting(run_id, None)
    return runs.record_failure(open_resources().warehouse.engine, run_id, status, why)


@task(name="resume-run", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def resume_run(run_id: str) -> str:
    """Let a run that failed after its approvals go on (approved digest unchanged; audited),
    after checking the handoff's needs again; the approved packet digest."""
    from campaignops import preflight, resume

    r = open_resources()
    digest = resume.resume_run(r.warehouse, r.settings, run_id)
    preflight.check_handoff_ready(r.warehouse, r.settings, run_id)
    return digest
