"""Refresh the results of recently sent runs: one artifact per run (docs/results.md)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from campaignops.errors import ResultsUnavailable
from campaignops.resources import open_resources
from campaignops.results import recent_sent_runs
from tasks import refresh_run_results


@flow(name="refresh-results", log_prints=False)
def refresh_results(days: int = 30, window_days: int | None = None) -> dict[str, int]:
    """Measure every run sent in the last ``days`` days; runs that cannot be measured are counted."""
    logger = get_run_logger()
    run_ids = recent_sent_runs(open_resources().warehouse, days)
    done = skipped = 0
    for run_id in run_ids:
        try:
            refresh_run_results(run_id, window_days)
            done += 1
        except ResultsUnavailable as exc:
            logger.warning("results of %s skipped: %s", run_id, exc)
            skipped += 1
    logger.info("results refreshed for %d run(s) sent in the last %d days (%d skipped)", done, days, skipped)
    return {"runs": len(run_ids), "refreshed": done, "skipped": skipped}
