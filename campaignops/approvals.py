"""Approvers, their personal keys, and the rules an approval must obey."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import Brief
from campaignops.db import approvals, approvers, standing_approvals
from campaignops.errors import CampaignOpsError
from campaignops.runs import utcnow

KDF_ITERATIONS = 200_000


def _hash_key(key: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), bytes.fromhex(salt), KDF_ITERATIONS).hex()


def add_approver(engine: Engine, name: str, kind: str = "person", replace: bool = False) -> str:
    """Register an approver and return their new personal key (shown once, stored hashed)."""
    name = name.strip()
    if not name:
        raise CampaignOpsError("approver NAME is empty: give the name the brief lists")
    key = secrets.token_urlsafe(24)
    salt = secrets.token_hex(16)
    row = {"name": name, "key_salt": salt, "key_hash": _hash_key(key, salt), "kind": kind,
           "created_at": utcnow()}
    with engine.begin() as conn:
        exists = conn.execute(sa.select(approvers.c.name).where(approvers.c.name == name)).first()
        if exists and not replace:
            raise CampaignOpsError(
                f"approver {name} already has a key: pass --rotate to issue a new one"
            )
        if exists:
            conn.execute(sa.update(approvers).where(approvers.c.name == name).values(**row))
        else:
            conn.execute(sa.insert(approvers).values(**row))
    return key


def approver_kind(engine: Engine, name: str) -> str | None:
    """person, demo, or None when not registered."""
    with engine.connect() as conn:
        return conn.execute(sa.select(approvers.c.kind).where(approvers.c.name == name)).scalar()


def verify_key(engine: Engine, name: str, key: str) -> bool:
    """True when the key is the approver's registered key (constant-time compare)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(approvers.c.key_salt, approvers.c.key_hash).where(approvers.c.name == name)
        ).first()
    if row is None or not key:
        return False
    return hmac.compare_digest(_hash_key(key, row.key_salt), row.key_hash)


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


def record_decision(engine: Engine, run_id: str, d: Decision, packet_digest: str) -> None:
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
    from campaignops.db import audit_log

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
