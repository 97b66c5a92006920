"""Lifecycle scoring: every customer's score and stage in the warehouse, hourly (docs/lifecycle.md)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from campaignops.resources import open_resources
from tasks.lifecycle import announce_transitions, check_sla, publish_funnel, score_lifecycle


@flow(name="lifecycle-scoring", log_prints=False)
def lifecycle_scoring(model_path: str | None = None, full: bool = False) -> dict[str, Any]:
    """Score, announce one event per target stage, publish the funnel, check the MQL SLA."""
    open_resources()
    scoring_id = score_lifecycle(model_path, full)
    moved = announce_transitions(scoring_id, model_path)
    publish_funnel(scoring_id)
    breached = check_sla(model_path)
    get_run_logger().info("lifecycle scoring %s: %d entered a new stage (%d backwards); %d MQLs past the SLA",
                          scoring_id, sum(moved.values()) - moved["backward"], moved["backward"], breached)
    backward = moved.pop("backward")
    return {"scoring_id": scoring_id, "entered": moved, "backward": backward, "sla_breached": breached}
