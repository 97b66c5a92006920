"""Send handoff: the approved audience to the ESP exactly once (http), or as a checked file drop (file).

The step :func:`hand_off_audience` refuses unless every stage approved exactly what would be
sent and the send time is not stale, then hands off in the configured mode. Modules:
``batches`` (the audience as deterministic batches), ``http`` (ESP batches, ledger,
reconciliation), ``file`` (CSV + manifest drop), ``send_time`` (the staleness check).
"""

from __future__ import annotations

import datetime as dt

from campaignops import audit, runs
from campaignops.approval import decisions, packet_digest
from campaignops.errors import HandoffRefused
from campaignops.handoff.file import FileHandoff, drop_file
from campaignops.handoff.http import HttpHandoff, send_over_http
from campaignops.handoff.send_time import check_send_time
from campaignops.qa import recorded_verdict
from campaignops.segmentation import audience_digest
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

HandoffOutcome = HttpHandoff | FileHandoff
SYSTEM = "campaignops"


def refuse_unless_approved(wh: Warehouse, run_id: str) -> None:
    """Refuse (audited) unless every stage approved exactly this brief, audience and QA."""
    run = runs.get_run(wh.engine, run_id)
    qa = recorded_verdict(wh, run_id)
    current = packet_digest(run.brief.digest(), audience_digest(wh.engine, run_id), qa.qa_digest)
    signed = [d for d in decisions(wh.engine, run_id) if d["decision"] == "approve"]
    stages = {s.stage for s in run.brief.approvals}
    if {d["stage"] for d in signed} != stages or any(d["packet_digest"] != current for d in signed):
        audit.append(wh.engine, run_id=run_id, step="handoff", action="refused", actor=SYSTEM,
                     details={"why": "audience, brief or QA changed after approval, or a stage is unsigned"})
        raise HandoffRefused(
            f"run {run_id}: what would be sent differs from what was approved "
            "(audience, brief or QA changed, or a stage is unsigned); nothing was sent, start a new run"
        )


def hand_off_audience(wh: Warehouse, settings: Settings, run_id: str) -> HandoffOutcome:
    """The handoff step: only what every stage approved, never stale, in the configured mode."""
    refuse_unless_approved(wh, run_id)
    brief = runs.get_run(wh.engine, run_id).brief
    check_send_time(brief.send_at, dt.datetime.now(dt.UTC),
                    dt.timedelta(minutes=settings.send_grace_minutes))
    if settings.handoff_mode == "file":
        return drop_file(wh, settings, run_id, brief)
    return send_over_http(wh, settings, run_id, brief)
