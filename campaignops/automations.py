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
LEGAL_BLOCK = "campaignops-legal"  # the legal contact's webhook (the alerts webhook when not given)
PREFIX = "campaignops: "
PAYLOAD = (
    '{"automation": "{{ automation.name }}", "event": "{{ event.event if event else \'\' }}", '
    '"resource": "{{ event.resource.id if event else \'\' }}"}'
)

# What an incident's webhook carries: ids, the campaign, the kind and the route; no person.
INCIDENT_PAYLOAD = (
    '{"automation": "{{ automation.name }}", "event": "{{ event.event if event else \'\' }}", '
    '"incident": "{{ event.payload.incident_id if event else \'\' }}", '
    '"campaign": "{{ event.resource.get(\'campaignops.campaign\', \'\') if event else \'\' }}", '
    '"kind": "{{ event.resource.get(\'campaignops.kind\', \'\') if event else \'\' }}", '
    '"route": "{{ event.resource.get(\'campaignops.route\', \'\') if event else \'\' }}"}'
)


@dataclass(frozen=True)
class Rule:
    """One automation: a name, the event that fires it, and how."""

    name: str
    event: str
    description: str
    proactive_expect: str | None = None  # fire when this does NOT follow within the window
    match: tuple[tuple[str, str], ...] = ()  # resource labels the event must carry
    block: str = WEBHOOK_BLOCK  # the webhook it calls
    payload: str = PAYLOAD


RULES = (
    Rule("qa failed", "campaignops.qa.failed", "A critical QA check blocked a run: notify campaign ops."),
    Rule("handoff mismatch", "campaignops.handoff.mismatch",
         "The ESP's counts do not reconcile with the approved audience: page platform ops."),
    Rule("audience drift", "campaignops.drift",
         "A recurring campaign's audience moved beyond its drift tolerance: notify the owner."),
    Rule("watch flagged", "campaignops.watch.flagged",
         "A recurring campaign's audience changed make-up or lost people to one cause (docs/watch.md): "
         "notify the owner."),
    Rule("approval waiting too long", "campaignops.approval.pending",
         "Nobody decided an approval within the escalation window: escalate.",
         proactive_expect="campaignops.approval.decided"),
    Rule("incident: notify the owner", "campaignops.incident.opened",
         "A send went wrong: tell the brief's owner at once (the payload names the campaign and "
         "the incident; `campaignops incident show ID` is the impact report).",
         payload=INCIDENT_PAYLOAD),
    Rule("incident: notify legal", "campaignops.incident.opened",
         "A send went wrong in a way that needs legal (CAMPAIGNOPS_INCIDENT_LEGAL_KINDS): tell the "
         "legal contact.", match=(("campaignops.legal", "true"),), block=LEGAL_BLOCK,
         payload=INCIDENT_PAYLOAD),
)


def build(block_document_id: Any, escalate_after: dt.timedelta,
          blocks: dict[str, Any] | None = None) -> list[Any]:
    """The automations, each calling its webhook (``blocks``: block name -> id; the alerts
    webhook for any block not given)."""
    from prefect.automations import Automation, CallWebhook, EventTrigger, Posture

    out = []
    for rule in RULES:
        block_id = (blocks or {}).get(rule.block, block_document_id)
        action = CallWebhook(block_document_id=block_id, payload=rule.payload)
        if rule.proactive_expect:
            trigger = EventTrigger(after={rule.event}, expect={rule.proactive_expect},
                                   for_each={"prefect.resource.id"}, posture=Posture.Proactive,
                                   threshold=1, within=escalate_after)
        else:
            trigger = EventTrigger(expect={rule.event}, match=dict(rule.match),
                                   posture=Posture.Reactive, threshold=1, within=dt.timedelta(0))
        out.append(Automation(name=PREFIX + rule.name, description=rule.description, trigger=trigger,
                              actions=[action]))
    return out


def _save_webhook(url: str, name: str, flag: str) -> Any:
    """Save a Webhook block for an http(s) URL; its id."""
    from prefect.blocks.webhook import Webhook

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CampaignOpsError(f"{flag} must be an http(s) URL, e.g. https://hooks.example.com/x")
    loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    block = Webhook(method="POST", url=SecretStr(url), allow_private_urls=loopback)
    return block.save(name, overwrite=True)


def install(webhook_url: str, escalate_after: dt.timedelta = dt.timedelta(hours=4),
            legal_webhook_url: str | None = None) -> list[str]:
    """Save the webhook block(s) and (re)create every automation; their names."""
    from prefect.automations import Automation

    block_id = _save_webhook(webhook_url, WEBHOOK_BLOCK, "--webhook-url")
    blocks = {WEBHOOK_BLOCK: block_id}
    if legal_webhook_url:
        blocks[LEGAL_BLOCK] = _save_webhook(legal_webhook_url, LEGAL_BLOCK, "--legal-webhook-url")
    names = []
    for automation in build(block_id, escalate_after, blocks):
        try:
            existing: Automation = Automation.read(name=automation.name)  # type: ignore[assignment]
        except ValueError:
            existing = None  # type: ignore[assignment]  # not installed yet
        if existing is not None:
            existing.delete()
        automation.create()
        names.append(automation.name)
    return names
