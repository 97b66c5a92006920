"""Publishing the audit chain's head outside the database, after every run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from campaignops import audit
from campaignops.errors import CampaignOpsError
from campaignops.resources import open_resources
from tasks.common import RETRY_DELAYS, TASK_RETRIES, retry_transient, run_resource

HEAD_ARTIFACT = "campaignops-audit-head"


@task(name="publish-audit-head", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_audit_head(run_id: str) -> int | None:
    """Anchor the verified chain's head (file, artifact, event); the head's number, or None.

    A chain that does not verify is not anchored: the run's event says so instead
    (``campaignops.audit.broken``), and this task does not fail the run it closes.
    """
    r = open_resources()
    try:
        a = audit.anchor(r.warehouse.engine, r.settings.resolved_anchor_file)
    except CampaignOpsError as exc:
        emit_event(event="campaignops.audit.broken", resource=run_resource(run_id),
                   payload={"reason": str(exc)[:300]})
        return None
    if a is None:
        return None
    create_markdown_artifact(
        key=HEAD_ARTIFACT, description="the audit chain's head, published outside the warehouse",
        markdown=(f"### Audit chain head\n\n| record | hash | anchored at | key id |\n|---:|---|---|---|\n"
                  f"| {a.n} | `{a.hash}` | {a.at} | `{a.key_id}` |\n\n"
                  "Check it any time: `campaignops audit verify` (the chain, every record's MAC, "
                  "the numbering and every anchor)."))
    emit_event(event="campaignops.audit.anchored", resource=run_resource(run_id),
               payload={"n": a.n, "hash": a.hash, "key_id": a.key_id})
    return a.n
