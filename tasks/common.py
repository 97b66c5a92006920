"""What every campaignops task shares: the retry policy, artifact keys and event resources.

One retry layer per failure. A task is retried (``TASK_RETRIES`` more attempts, so at most
three) only for a transient infrastructure failure: the warehouse connection dropped or
locked, the disk or the Prefect API briefly unavailable. A CampaignOpsError is an outcome
(a bad brief, a QA block, a refusal, an ESP that stayed down through the ESP client's own
bounded retries) and is never retried; neither is a bug (a TypeError will not fix itself).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import httpx
import sqlalchemy.exc

from campaignops.errors import CampaignOpsError

TASK_RETRIES = 2
RETRY_DELAYS: list[float] = [2.0, 10.0]
TRANSIENT = (
    sqlalchemy.exc.OperationalError,  # connection lost, database locked, server restarting
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    httpx.TransportError,  # the Prefect API (events, artifacts) briefly unreachable
    TimeoutError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """True for a failure a retry can cure (decided by type)."""
    if isinstance(exc, CampaignOpsError):
        return exc.retryable
    return isinstance(exc, TRANSIENT)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry transient infrastructure failures only."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def artifact_key(campaign_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a campaign's artifact."""
    slug = re.sub(r"[^a-z0-9-]+", "-", campaign_id.lower()).strip("-")
    return f"{slug}-{what}"[:100]


def run_resource(run_id: str, campaign_id: str | None = None) -> dict[str, str]:
    """The Prefect event resource of a campaign run."""
    resource = {"prefect.resource.id": f"campaignops.run.{run_id}"}
    if campaign_id:
        resource["prefect.resource.name"] = campaign_id
    return resource


def step_key(context: Any, parameters: dict[str, Any]) -> str:
    """The cache key of a step: its task's name and its inputs (ids and stage names).

    A deployment run that suspends for an approval is replayed from the top when resumed;
    each step then gets its own persisted result back instead of running twice. Prefect's
    INPUTS policy alone would let two steps of the same run (both given just the run id)
    share one key.
    """
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()
    return f"{context.task.name}-{digest[:32]}"
