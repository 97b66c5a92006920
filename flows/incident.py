"""The incident report: announce an opened incident, publish its impact report."""

from __future__ import annotations

from prefect import flow

from campaignops.resources import open_resources
from tasks.incident import announce_incident, publish_impact


@flow(name="incident-report", log_prints=False)
def incident_report(incident_id: str, opened: bool = False) -> str:
    """The opened event (when just opened) and the impact artifact; the artifact's key."""
    open_resources()
    if opened:
        announce_incident(incident_id)
    return publish_impact(incident_id)
