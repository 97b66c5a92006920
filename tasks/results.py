"""Campaign results task: one sent run's results measured and published."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from campaignops.resources import open_resources
from campaignops.results import run_results, write_chart
from campaignops.settings import load_settings
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient
from tasks.markdown import results_markdown


@task(name="refresh-run-results", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def refresh_run_results(run_id: str, window_days: int | None = None) -> dict[str, float | int | None]:
    """Measure a sent run against its holdout; publish the markdown artifact and the SVG chart."""
    settings = load_settings()
    res = run_results(open_resources(settings).warehouse, run_id, window_days=window_days)
    chart = write_chart(res, settings.home / "results")
    create_markdown_artifact(key=artifact_key(f"{res.campaign_id}-{run_id}", "results"),
                             markdown=results_markdown(res, chart), description="campaign results vs holdout")
    return {"treated": res.total.treated, "control": res.total.control, "lift": res.total.lift,
            "p_value": res.total.p_value, "notes": len(res.notes)}
