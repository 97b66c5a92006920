"""Brief intake task."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from campaignops import intake
from campaignops.intake import Intake, Mode
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient, step_key
from tasks.labels import label_run
from tasks.markdown import intake_markdown


@task(name="accept-brief", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=step_key, persist_result=True)
def accept_brief(run_id: str, brief_path: str, mode: Mode = "full",
                 incident_id: str | None = None) -> Intake:
    """Validate the brief, check its offers in the warehouse, register the run (linked to the
    incident it corrects, when given)."""
    accepted = intake.accept_brief(open_resources().warehouse, run_id, brief_path, mode,
                                   incident_id)
    for warning in accepted.warnings:  # one line each, the run goes on
        get_run_logger().warning("intake: %s", warning)
    create_markdown_artifact(key=artifact_key(accepted.campaign_id, "intake"),
                             markdown=intake_markdown(accepted), description="brief intake")
    label_run(run_id)
    return accepted
