"""Writes a run's labels (campaignops.runlabels) to Prefect: its name, tags and waiting tag;
and finds the links between its artifacts.

Labels are for people reading the run list; a label Prefect cannot take is logged and the
run goes on (the pipeline's outcome never depends on them).
"""

from __future__ import annotations

from uuid import UUID

import httpx
from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.exceptions import ObjectNotFound
from prefect.utilities.urls import url_for

from campaignops import runs
from campaignops.resources import open_resources
from campaignops.runlabels import run_name, run_tags, trigger, waiting_tags

LABEL_ERRORS = (httpx.HTTPError, ObjectNotFound)


def label_run(run_id: str) -> None:
    """Name the run `<campaign> <slot>` and tag it campaign:, channel: and trigger:."""
    brief = runs.get_run(open_resources().warehouse.engine, run_id).brief
    zone = brief.schedule.timezone if brief.schedule else "UTC"
    try:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(UUID(run_id))
            how = trigger(fr.deployment_id, fr.auto_scheduled,
                          fr.created_by.type if fr.created_by else None, dict(fr.parameters))
            client.update_flow_run(UUID(run_id), name=run_name(brief.campaign_id,
                                                               fr.expected_start_time, zone),
                                   tags=run_tags(list(fr.tags), brief.campaign_id, brief.channel, how))
    except LABEL_ERRORS as exc:
        get_run_logger().warning("the run's name and tags were not set (%s)", type(exc).__name__)


def mark_waiting(run_id: str, stage: str | None) -> None:
    """Tag the run ``waiting:<stage>`` while it waits for the stage; drop the tag when decided."""
    try:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(UUID(run_id))
            client.update_flow_run(UUID(run_id), tags=waiting_tags(list(fr.tags), stage))
    except LABEL_ERRORS as exc:
        get_run_logger().warning("the run's waiting tag was not updated (%s)", type(exc).__name__)


def ui_base(run_id: str) -> str:
    """The Prefect UI's address ('' when none is configured: links stay relative to the UI)."""
    run_url = url_for("flow-run", obj_id=run_id) or ""
    return run_url.rsplit("/runs/flow-run/", 1)[0]


def artifact_links(run_id: str, keys: list[str]) -> dict[str, str]:
    """The UI address of this run's artifact under each key it has published so far."""
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
                key=ArtifactFilterKey(any_=keys)))
    except LABEL_ERRORS as exc:
        get_run_logger().warning("links to the run's artifacts were left out (%s)", type(exc).__name__)
        return {}
    base = ui_base(run_id)
    latest = {str(a.key): a for a in sorted(found, key=lambda a: a.created or 0) if a.key}
    return {key: f"{base}/artifacts/artifact/{a.id}" for key, a in latest.items()}
