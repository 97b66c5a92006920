"""Brief intake task."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS

from campaignops import steps
from tasks.common import RETRIES, RETRY_DELAYS, artifact_key, retry_transient


@task(name="accept-brief", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_policy=INPUTS, persist_result=True)
def accept_brief(run_id: str, brief_path: str, mode: str = "full") -> dict[str, Any]:
    """Validate the brief, check its offers in the warehouse, register the run."""
    summary = steps.intake(run_id, brief_path, dry_run=mode != "full")
    create_markdown_artifact(
        key=artifact_key(summary["campaign_id"], "intake"),
        markdown=(
            f"### Brief accepted: {summary['campaign_id']}\n\n"
            f"- brief digest `{summary['brief_digest'][:16]}…`\n"
            f"- cells: {', '.join(summary['cells'])}; offers: {', '.join(summary['offers']) or 'none'}\n"
            f"- approval stages: {', '.join(summary['stages'])}\n- mode: {mode}\n"
        ),
        description="brief intake",
    )
    return summary
