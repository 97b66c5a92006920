"""Approval waits: the packet, the wait, the rules a decision must obey, standing approvals, expiry.

The Prefect side of a wait (pause or suspend, the input form) lives in flows/approval.py;
everything it decides is here, as plain functions of the warehouse and a run id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.approvers import approver_kind, verify_key
from campaignops.brief import Brief
from campaignops.errors import ApprovalExpired, ApprovalRejected, CampaignOpsError
from campaignops.qa import DRIFT_CHECK, QAVerdict, recorded_verdict
from campaignops.runs import utcnow
from campaignops.schema import approvals, audit_log, standing_approvals
from campaignops.segmentation import Waterfall, audience_digest, recorded_waterfall, sample_rows
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"

@dataclass(frozen=True)
class Decision:
    """What an approver submitted for one stage."""

    stage: str
    approver: str
    decision: str  # approve | reject
    reason: str
    key_ok: bool
    standing: bool = False


def refusal(engine: Engine, brief: Brief, run_id: str, d: Decision) -> str | None:
    """Why a submitted decision is refused, or None when it stands."""
    stage = next((s for s in brief.approvals if s.stage == d.stage), None)
    if stage is None:
        return f"stage {d.stage!r} is not in the brief; use one of {[s.stage for s in brief.approvals]}"
    if d.decision not in ("approve", "reject"):
        return "decision must be approve or reject"
    name = d.approver.strip().lower()
    if name == brief.owner.strip().lower():
        return f"{d.approver} owns this campaign and may not approve or reject it"
    if name not in (a.strip().lower() for a in stage.approvers):
        return f"{d.approver} is not an approver of stage {d.stage}"
    if not d.key_ok:
        return f"the approval key for {d.approver} is wrong or not registered"
    if d.decision == "reject" and not d.reason.strip():
        return "a rejection needs a reason"
    if d.standing and d.decision == "approve" and brief.standing_approval != "allowed":
        return "this brief does not allow a standing approval (standing_approval: allowed)"
    with engine.connect() as conn:
        earlier = conn.execute(
            sa.select(approvals.c.stage).where(
                approvals.c.run_id == run_id, sa.func.lower(approvals.c.approver) == name,
                approvals.c.stage != d.stage,
            )
        ).first()
    if earlier is not None and d.decision == "approve":
        return f"{d.approver} already signed stage {earlier[0]} of this run; another person must sign {d.stage}"
    return None


def _store_decision(engine: Engine, run_id: str, d: Decision, packet_digest: str) -> None:
    """Store an accepted decision for a stage."""
    with engine.begin() as conn:
        conn.execute(sa.insert(approvals).values(
            run_id=run_id, stage=d.stage, approver=d.approver, decision=d.decision,
            reason=d.reason or None, packet_digest=packet_digest, decided_at=utcnow(),
        ))


def decisions(engine: Engine, run_id: str) -> list[dict[str, object]]:
    """Accepted decisions of a run, in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(approvals).where(approvals.c.run_id == run_id).order_by(approvals.c.decided_at)
        ).mappings().all()
    return [dict(r) for r in rows]


def packet_digest(brief_digest: str, audience_digest: str, qa_digest: str) -> str:
    """What an approval is bound to: the brief, the audience snapshot and the QA results."""
    return hashlib.sha256(f"{brief_digest}:{audience_digest}:{qa_digest}".encode()).hexdigest()


def expires_at(since: dt.datetime, brief: Brief) -> dt.datetime:
    """When a wait that started at `since` expires."""
    return since + dt.timedelta(hours=brief.approval_timeout_hours)


@dataclass(frozen=True)
class StandingGrant:
    """An active standing approval of one stage of a recurring campaign."""

    grant_id: int
    campaign_id: str
    stage: str
    granted_by: str
    granted_in_run: str
    granted_at: dt.datetime


def grant_standing(engine: Engine, campaign_id: str, stage: str, approver: str, run_id: str) -> None:
    """Record a standing approval (replacing any active one for the stage)."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.update(standing_approvals).where(
            standing_approvals.c.campaign_id == campaign_id, standing_approvals.c.stage == stage,
            standing_approvals.c.revoked_at.is_(None)).values(revoked_at=now, revoked_by=approver))
        conn.execute(sa.insert(standing_approvals).values(
            campaign_id=campaign_id, stage=stage, granted_by=approver, granted_in_run=run_id,
            granted_at=now))


def active_standing(engine: Engine, campaign_id: str, stage: str) -> StandingGrant | None:
    """The stage's active standing approval, if any."""
    t = standing_approvals
    with engine.connect() as conn:
        r = conn.execute(sa.select(t).where(t.c.campaign_id == campaign_id, t.c.stage == stage,
                                            t.c.revoked_at.is_(None))
                         .order_by(t.c.granted_at.desc()).limit(1)).first()
    if r is None:
        return None
    return StandingGrant(int(r.grant_id), r.campaign_id, r.stage, r.granted_by, r.granted_in_run,
                         r.granted_at)


def revoke_standing(engine: Engine, campaign_id: str, stage: str | None, approver: str) -> int:
    """Revoke the campaign's standing approvals (one stage or all); how many were active."""
    t = standing_approvals
    where = [t.c.campaign_id == campaign_id, t.c.revoked_at.is_(None)]
    if stage is not None:
        where.append(t.c.stage == stage)
    with engine.begin() as conn:
        result = conn.execute(sa.update(t).where(*where).values(revoked_at=utcnow(), revoked_by=approver))
    return int(result.rowcount or 0)


def refused_attempts(engine: Engine, run_id: str, stage: str) -> int:
    """How many decisions for the stage were refused (numbers the next wait)."""

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.run_id == run_id, audit_log.c.step == f"approval:{stage}",
            audit_log.c.action == "refused")).scalar_one())


def stage_decision(engine: Engine, run_id: str, stage: str) -> dict[str, object] | None:
    """The accepted decision for a stage of a run, if one was recorded."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(approvals).where(approvals.c.run_id == run_id,
                                                    approvals.c.stage == stage)).mappings().first()
    return dict(r) if r is not None else None


@dataclass(frozen=True)
class Packet:
    """What an approver reads before deciding a stage, and the digest the decision binds to."""

    run_id: str
    stage: str
    campaign_id: str
    name: str
    owner: str
    objective: str
    approvers: tuple[str, ...]
    standing_allowed: bool
    send_at: dt.datetime | None
    waterfall: Waterfall
    qa: QAVerdict
    brief_digest: str
    audience_digest: str
    packet_digest: str
    cells: tuple[tuple[str, str | None, int], ...]  # (cell, offer, recipients)
    samples: tuple[dict[str, Any], ...] = field(default=())  # masked: initials only
    timeout_hours: float = 24.0


def _stage(brief: Brief, stage: str) -> Any:
    found = next((s for s in brief.approvals if s.stage == stage), None)
    if found is None:
        raise CampaignOpsError(
            f"stage {stage!r} is not in the brief; use one of {[s.stage for s in brief.approvals]}")
    return found


def prepare_approval(wh: Warehouse, run_id: str, stage: str) -> Packet:
    """The approval packet of a stage: waterfall, QA, cells and offers, masked samples, digest."""
    run = runs.get_run(wh.engine, run_id)
    b = run.brief
    wf = recorded_waterfall(wh.engine, run_id)
    qa = recorded_verdict(wh, run_id)
    a_digest = audience_digest(wh.engine, run_id)
    return Packet(
        run_id=run_id, stage=stage, campaign_id=b.campaign_id, name=b.name, owner=b.owner,
        objective=b.objective, approvers=tuple(_stage(b, stage).approvers),
        standing_allowed=b.standing_approval == "allowed", send_at=b.send_at, waterfall=wf, qa=qa,
        brief_digest=run.brief_digest, audience_digest=a_digest,
        packet_digest=packet_digest(run.brief_digest, a_digest, qa.qa_digest),
        cells=tuple((c.name, c.offer_code, wf.cells.get(c.name, 0)) for c in b.cells),
        samples=tuple(sample_rows(wh.engine, run_id)), timeout_hours=b.approval_timeout_hours,
    )


@dataclass(frozen=True)
class Wait:
    """An open approval wait: since when, until when."""

    run_id: str
    stage: str
    since: dt.datetime
    deadline: dt.datetime
    attempt: int  # waits for this stage so far, refused decisions included (keys each pause)


def open_wait(wh: Warehouse, run_id: str, stage: str, digest: str) -> Wait:
    """Mark the run as waiting for the stage (idempotent on replay); when the wait began and ends."""
    run = runs.get_run(wh.engine, run_id)
    if run.status == runs.AWAITING and run.waiting_stage == stage and run.waiting_since:
        since = run.waiting_since
    else:
        since = runs.utcnow()
        runs.set_status(wh.engine, run_id, runs.AWAITING, waiting_stage=stage, waiting_since=since)
        audit.append(wh.engine, run_id=run_id, step=f"approval:{stage}", action="waiting", actor=SYSTEM,
                     details={"packet_digest": digest, "approvers": len(_stage(run.brief, stage).approvers)})
    return Wait(run_id, stage, since, expires_at(since, run.brief),
                refused_attempts(wh.engine, run_id, stage) + 1)


@dataclass(frozen=True)
class Judgement:
    """A submitted decision as judged: accepted or refused (with why)."""

    accepted: bool
    decision: str
    approver: str
    why: str | None = None


def record_decision(wh: Warehouse, run_id: str, stage: str, approver: str, decision: str, reason: str,
                    key: str, via: str, digest: str, standing: bool = False,
                    wait_key: str = "") -> Judgement:
    """Judge a submitted decision against the approval rules; record and audit it either way."""
    engine = wh.engine
    run = runs.get_run(engine, run_id)
    d = Decision(stage=stage, approver=approver.strip(), decision=decision, reason=reason or "",
                 key_ok=verify_key(engine, approver.strip(), key), standing=standing)
    why = refusal(engine, run.brief, run_id, d)
    kind = approver_kind(engine, d.approver)
    actor = f"{d.approver} [demo approver]" if kind == "demo" else d.approver
    if why is not None:
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="refused", actor=actor,
                     details={"decision": decision, "why": why, "via": via, "wait_key": wait_key})
        return Judgement(False, decision, d.approver, why)
    _store_decision(engine, run_id, d, digest)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}",
                 action="approved" if decision == "approve" else "rejected",
                 actor=actor, details={"packet_digest": digest, "reason": d.reason or None,
                                       "via": via, "demo": kind == "demo",
                                       "standing_granted": standing and decision == "approve",
                                       "wait_key": wait_key})
    if standing and decision == "approve":
        grant_standing(engine, run.campaign_id, stage, d.approver, run_id)
    runs.set_status(engine, run_id, runs.REJECTED if decision == "reject" else runs.APPROVED,
                    waiting_stage=None)
    return Judgement(True, decision, d.approver)


def decide_without_wait(wh: Warehouse, run_id: str, stage: str, digest: str) -> str | None:
    """How the stage is decided without a person, or None when a person must decide.

    A replayed (resumed) run finds the stage's earlier decision ("earlier decision";
    ApprovalRejected when it was a rejection). Otherwise an active standing approval
    decides it while QA is clean and the size was checked against recent runs ("standing
    approval by NAME"); a bypassed standing approval is audited.
    """
    earlier = stage_decision(wh.engine, run_id, stage)
    if earlier is not None:
        if earlier["decision"] == "reject":
            raise ApprovalRejected(f"stage {stage} rejected by {earlier['approver']}: {earlier['reason']}")
        return "earlier decision"
    grantor = _use_standing_approval(wh, run_id, stage, digest)
    return None if grantor is None else f"standing approval by {grantor}"


def _use_standing_approval(wh: Warehouse, run_id: str, stage: str, digest: str) -> str | None:
    """Approve the stage with an active standing approval when QA is clean and the size in
    tolerance; the grantor, or None when a person must decide (audited either way)."""
    engine = wh.engine
    run = runs.get_run(engine, run_id)
    if run.brief.standing_approval != "allowed":
        return None
    grant = active_standing(engine, run.campaign_id, stage)
    if grant is None:
        return None
    qa = recorded_verdict(wh, run_id)
    why = None
    if not qa.passed or qa.warnings:
        why = f"QA has warnings: {', '.join(qa.warnings)}" if qa.warnings else "QA did not pass"
    elif DRIFT_CHECK not in qa.applied:
        why = "no recent runs to check the audience size against"
    if why is not None:
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="standing_bypassed",
                     actor=SYSTEM, details={"why": why, "grant_id": grant.grant_id})
        return None
    _store_decision(engine, run_id, Decision(stage, grant.granted_by, "approve", "", True), digest)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="approved",
                 actor=f"{grant.granted_by} [standing approval]",
                 details={"packet_digest": digest, "via": "standing", "grant_id": grant.grant_id,
                          "granted_in_run": grant.granted_in_run})
    runs.set_status(engine, run_id, runs.APPROVED, waiting_stage=None)
    return grant.granted_by


def expire(wh: Warehouse, run_id: str, stage: str) -> ApprovalExpired:
    """Record (once) that a wait ran past its timeout: the run expires and sends nothing."""
    if runs.get_run(wh.engine, run_id).status != runs.EXPIRED:
        runs.set_status(wh.engine, run_id, runs.EXPIRED, waiting_stage=None)
        audit.append(wh.engine, run_id=run_id, step=f"approval:{stage}", action="expired", actor=SYSTEM,
                     details={})
    return ApprovalExpired(f"approval wait for stage {stage} expired; the run did not send")


def expire_overdue(wh: Warehouse) -> list[str]:
    """Expire waits past their deadline whose process is gone (suspended runs); their ids."""
    now = runs.utcnow()
    expired = []
    for r in runs.waiting_runs(wh.engine):
        since = r.waiting_since or r.updated_at
        if r.waiting_stage and expires_at(since, r.brief) < now:
            expire(wh, r.run_id, r.waiting_stage)
            expired.append(r.run_id)
    return expired
