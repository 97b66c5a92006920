"""Incident tasks: the opened event the automations route, and the impact report artifact.

They run in the ``incident-report`` flow (flows/incident.py), which the CLI starts after
an incident is opened, closed or remediated. Counts and ids only; no address, no note.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from campaignops.incidents import event_payload, get_incident, impact_report
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient, run_resource
from tasks.markdown import impact_markdown

OPENED = "campaignops.incident.opened"


@task(name="announce-incident", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def announce_incident(incident_id: str) -> str:
    """Emit campaignops.incident.opened (its labels say the route: owner, and legal when needed)."""
    r = open_resources()
    inc = get_incident(r.warehouse.engine, incident_id)
    resource, payload = event_payload(inc, r.settings)
    emit_event(event=OPENED, resource=resource,
               related=[{**run_resource(inc.run_id, inc.campaign_id), "prefect.resource.role": "run"}],
               payload=payload)
    return OPENED


@task(name="publish-impact", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_impact(incident_id: str) -> str:
    """The impact report as a Prefect markdown artifact (counts only); its key."""
    r = open_resources()
    report = impact_report(r.warehouse.engine, r.settings, incident_id)
    key = artifact_key(report.incident.campaign_id, f"incident-{incident_id}")
    create_markdown_artifact(key=key, markdown=impact_markdown(report),
                             description=f"impact of incident {incident_id} (counts only)")
    return key
