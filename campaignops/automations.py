"""Automations as code: what the Prefect server does when campaignops events happen.

`campaignops automations install --webhook-url URL` saves a Webhook block and
(re)creates these automations on the server PREFECT_API_URL points at.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from pydantic import SecretStr

from campaignops.errors import CampaignOpsError

WEBHOOK_BLOCK = "campaignops-alerts"
PREFIX = "campaignops: "
PAYLOAD = (
    '{"automation": "{{ automation.name }}", "event": "{{ event.event if event else \'\' }}", '
    '"resource": "{{ event.resource.id if event else \'\' }}"}'
)


@dataclass(frozen=True)
class Rule:
    """One automation: a name, the event that fires it, and how."""

    name: str
    event: str
    description: str
    proactive_expect: str | None = None  # fire when this does NOT follow within the window


RULES = (
    Rule("qa failed", "campaignops.qa.failed", "A critical QA check blocked a run: notify campaign ops."),
    Rule("handoff mismatch", "campaignops.handoff.mismatch",
         "The ESP's counts do not reconcile with the approved audience: page platform ops."),
    Rule("audience drift", "campaignops.drift",
         "A recurring campaign's audience moved beyond its drift tolerance: notify the owner."),
    Rule("approval waiting too long", "campaignops.approval.pending",
         "Nobody decided an approval within the escalation window: escalate.",
         proactive_expect="campaignops.approval.decided"),
)


def build(block_document_id: Any, escalate_after: dt.timedelta) -> list[Any]:
    """The automations, each calling the alerts webhook."""
    from prefect.automations import Automation, CallWebhook, EventTrigger, Posture

    out = []
    for rule in RULES:
        action = CallWebhook(block_document_id=block_document_id, payload=PAYLOAD)
        if rule.proactive_expect:
            trigger = EventTrigger(after={rule.event}, expect={rule.proactive_expect},
                                   for_each={"prefect.resource.id"}, posture=Posture.Proactive,
                                   threshold=1, within=escalate_after)
        else:
            trigger = EventTrigger(expect={rule.event}, posture=Posture.Reactive, threshold=1,
                                   within=dt.timedelta(0))
        out.append(Automation(name=PREFIX + rule.name, description=rule.description, trigger=trigger,
                              actions=[action]))
    return out


def install(webhook_url: str, escalate_after: dt.timedelta = dt.timedelta(hours=4)) -> list[str]:
    """Save the webhook block and (re)create every automation; their names."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook

    parsed = urlparse(webhook_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CampaignOpsError("--webhook-url must be an http(s) URL, e.g. https://hooks.example.com/x")
    loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    block = Webhook(method="POST", url=SecretStr(webhook_url), allow_private_urls=loopback)
    block_id = block.save(WEBHOOK_BLOCK, overwrite=True)
    names = []
    for automation in build(block_id, escalate_after):
        try:
            existing: Automation = Automation.read(name=automation.name)  # type: ignore[assignment]
        except ValueError:
            existing = None  # type: ignore[assignment]  # not installed yet
        if existing is not None:
            existing.delete()
        automation.create()
        names.append(automation.name)
    return names
