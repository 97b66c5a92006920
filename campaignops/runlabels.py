"""How a campaign run is labelled in the Prefect UI: its name, its tags, its final message.

A run list should say, without opening anything, which campaign a run is, which slot it
filled, how it was started, and whether it sent, waits or was blocked. Plain functions of
what the run knows; tasks/labels.py writes them to Prefect.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from campaignops.handoff import HandoffOutcome
from campaignops.handoff.file import FileHandoff
from campaignops.segmentation import Waterfall

NAME_TIME = "%Y-%m-%d %H:%M"
WAITING = "waiting:"


def run_name(campaign_id: str, when: dt.datetime | None, timezone: str = "UTC") -> str:
    """`<campaign id> <slot>`: the scheduled (or start) time, in the schedule's time zone."""
    at = when or dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return f"{campaign_id} {at.astimezone(ZoneInfo(timezone)):{NAME_TIME}}"


def provisional_name(brief_path: str, when: dt.datetime | None) -> str:
    """The name a run has before intake has read its brief: the brief file's name and slot (UTC)."""
    return run_name(Path(brief_path).stem[:100] or "campaign", when)


def trigger(deployment_id: object, auto_scheduled: bool, created_by_type: str | None,
            parameters: dict[str, object]) -> str:
    """How the run was started, from what Prefect records of it: remediation (a correction
    of an incident), ad-hoc, schedule, automation or deployment."""
    if parameters.get("incident_id"):
        return "remediation"
    if deployment_id is None:
        return "ad-hoc"
    if auto_scheduled:
        return "schedule"
    if (created_by_type or "").upper() == "AUTOMATION":
        return "automation"
    return "deployment"


def run_tags(existing: list[str], campaign_id: str, channel: str, how: str) -> list[str]:
    """The tags a run list filters by, beside the run's other tags (ours replaced, not repeated)."""
    ours = ("campaign:", "channel:", "trigger:")
    kept = [t for t in existing if not t.startswith(ours)]
    return kept + [f"campaign:{campaign_id}", f"channel:{channel}", f"trigger:{how}"]


def waiting_tags(existing: list[str], stage: str | None) -> list[str]:
    """The run's tags with ``waiting:<stage>`` while it waits for a stage (None: not waiting)."""
    kept = [t for t in existing if not t.startswith(WAITING)]
    return kept + ([f"{WAITING}{stage}"] if stage else [])


def finished_message(waterfall: Waterfall, handoff: HandoffOutcome | None, mode: str) -> str:
    """The message of a run's final state: where it stands, in counts."""
    if mode == "count":
        return f"dry run: counted {waterfall.recipients:,} recipients"
    if mode == "qa" or handoff is None:
        return f"dry run: QA passed for {waterfall.recipients:,} recipients"
    if isinstance(handoff, FileHandoff):
        return f"sent {handoff.rows:,} recipients as a file drop"
    rec = handoff.reconciliation
    rejected = f", {rec.rejected:,} rejected by the ESP" if rec.rejected else ""
    return f"sent {rec.accepted:,} of {handoff.approved:,} recipients{rejected}"
