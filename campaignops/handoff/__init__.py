"""Send handoff: the approved audience to the ESP exactly once (http), or as a checked file drop (file).

The step :func:`hand_off_audience` trusts nothing the database alone says. Before the first
batch it verifies the audit chain and its anchors, takes each stage's decision from the
run's *signed* audit records (a row inserted into co_approvals decides nothing: it is
ignored and reported), stages exactly what would be sent into the outbox (a private file,
``outbox.py``), and refuses unless every stage approved that very content. It then posts
(or drops) from the outbox alone. Modules: ``batches`` (the audience as deterministic
batches), ``outbox`` (the staged recipients and the send digest), ``http`` (ESP batches,
ledger, reconciliation), ``file`` (CSV + manifest drop), ``send_time`` (the staleness check).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from campaignops import audit, runs
from campaignops.brief import Brief
from campaignops.errors import HandoffRefused
from campaignops.handoff.file import FileHandoff, drop_file
from campaignops.handoff.http import HttpHandoff, esp_token, send_over_http
from campaignops.handoff.outbox import Outbox, path_for, stage
from campaignops.handoff.send_time import check_send_time
from campaignops.qa import recorded_verdict
from campaignops.qa.quiet_hours import check_quiet_hours
from campaignops.sandbox.guard import refuse_real_esp
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

HandoffOutcome = HttpHandoff | FileHandoff
SYSTEM = "campaignops"


class UnprovenApproval(HandoffRefused):
    """The handoff found no signed approval for what would be sent; nothing was sent."""

    def __init__(self, message: str, ignored_rows: int = 0) -> None:
        super().__init__(message)
        self.ignored_rows = ignored_rows


def outbox_folder(settings: Settings) -> Path:
    """Where staged outboxes live (private, under the home folder)."""
    return settings.home.resolve() / "outbox"


def _refuse(wh: Warehouse, run_id: str, why: str, ignored: int = 0) -> UnprovenApproval:
    audit.append(wh.engine, run_id=run_id, step="handoff", action="refused", actor=SYSTEM,
                 details={"why": why[:300], "ignored_approval_rows": ignored})
    return UnprovenApproval(f"run {run_id}: {why}; nothing was sent", ignored)


def refuse_unless_approved(wh: Warehouse, settings: Settings, run_id: str) -> Outbox:
    """Stage what would be sent and return it, or refuse (audited) unless it is proven approved.

    Proven means: the audit chain verifies (numbering, links, hashes, MACs, anchors), every
    stage of the brief has a signed ``approved`` record, and each of them is bound to the
    packet digest of exactly what was just staged (brief, every recipient as sent, QA).
    """
    from campaignops.approval import packet_digest, signed_decisions, unbacked_rows

    engine = wh.engine
    verified = audit.verify(engine, settings.resolved_anchor_file)
    if not verified.ok:
        raise _refuse(wh, run_id, f"the audit chain does not verify ({verified.problem})")
    run = runs.get_run(engine, run_id)
    ignored = unbacked_rows(engine, run_id)
    if ignored:
        audit.append(engine, run_id=run_id, step="handoff", action="approval_rows_ignored",
                     actor=SYSTEM, details={"rows": ignored})
    signed = signed_decisions(engine, run_id)
    unsigned = [s.stage for s in run.brief.approvals
                if s.stage not in signed or signed[s.stage].action != "approved"]
    if unsigned:
        raise _refuse(wh, run_id, f"stage {', '.join(unsigned)} has no signed approval", len(ignored))
    qa = recorded_verdict(wh, run_id)
    outbox = stage(engine, run_id, run.brief, outbox_folder(settings))
    current = packet_digest(run.brief.digest(), outbox.send_digest, qa.qa_digest)
    if any(signed[s.stage].details.get("packet_digest") != current for s in run.brief.approvals):
        outbox.path.unlink(missing_ok=True)
        raise _refuse(wh, run_id, "what would be sent differs from what was approved (audience, "
                                  "addresses, fields, brief or QA changed); start a new run", len(ignored))
    return outbox


def staged_outbox(wh: Warehouse, settings: Settings, run_id: str) -> Outbox:
    """The run's outbox as the handoff staged it; staged again (and proven again) if it is gone."""
    path = path_for(outbox_folder(settings), run_id)
    if path.is_file():
        rec = audit.latest(wh.engine, run_id, "handoff", ("staged",))
        if rec is not None and audit.genuine(rec):
            return Outbox(run_id, path, int(rec.details["recipients"]), str(rec.details["send_digest"]))
    return refuse_unless_approved(wh, settings, run_id)


def refuse_sms_now(wh: Warehouse, settings: Settings, run_id: str, brief: Brief, now: dt.datetime) -> None:
    """An SMS run goes to the ESP's SMS endpoint only, and never into quiet hours: a run with no
    send_at goes out now, so its quiet hours are judged again now (QA judged them at QA time)."""
    if settings.handoff_mode == "file":
        raise HandoffRefused(f"run {run_id} is an SMS campaign: the file drop is for e-mail only; "
                             "nothing was sent; hand it off with CAMPAIGNOPS_HANDOFF_MODE=http")
    if brief.send_at is None and brief.quiet_hours is not None:
        check = check_quiet_hours(wh.engine, run_id, brief, now)
        if not check.passed:
            audit.append(wh.engine, run_id=run_id, step="handoff", action="refused", actor=SYSTEM,
                         details={"why": "quiet_hours", "in_quiet_hours": check.in_quiet_hours,
                                  "unknown_country": check.unknown_country})
            raise HandoffRefused(f"run {run_id}: nothing was sent: {check.line}")


def hand_off_audience(wh: Warehouse, settings: Settings, run_id: str) -> HandoffOutcome:
    """The handoff step: only what every stage approved, never stale, in the configured mode."""
    refuse_real_esp(wh, settings, run_id)  # a sandbox hands off to the ESP sandbox or a file only
    brief = runs.get_run(wh.engine, run_id).brief
    now = dt.datetime.now(dt.UTC)
    if brief.channel == "sms":
        refuse_sms_now(wh, settings, run_id, brief, now)
    check_send_time(brief.send_at, now, dt.timedelta(minutes=settings.send_grace_minutes))
    token = esp_token(settings, run_id) if settings.handoff_mode == "http" else None
    outbox = refuse_unless_approved(wh, settings, run_id)
    audit.append(wh.engine, run_id=run_id, step="handoff", action="staged", actor=SYSTEM,
                 details={"recipients": outbox.recipients, "send_digest": outbox.send_digest})
    if settings.handoff_mode == "file":
        return drop_file(wh, settings, run_id, brief, outbox)
    assert token is not None
    return send_over_http(wh, settings, run_id, brief, outbox, token)
