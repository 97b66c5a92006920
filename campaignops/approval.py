"""Approval waits: the packet, the wait, the rules a decision must obey, standing approvals, expiry.

The Prefect side of a wait (pause or suspend, the input form) lives in flows/approval.py;
everything it decides is here, as plain functions of the warehouse and a run id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs, watch
from campaignops.approvers import approver_kind, verify_key
from campaignops.brief import Brief
from campaignops.errors import ApprovalExpired, ApprovalRejected, CampaignOpsError
from campaignops.handoff.outbox import digest_audience
from campaignops.qa import DRIFT_CHECK, QAVerdict, recorded_verdict
from campaignops.qa.sms import packet_lines as sms_packet_lines
from campaignops.runs import utcnow
from campaignops.schema import approvals, audit_log
from campaignops.segmentation import Waterfall, recorded_waterfall, sample_rows
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
    earlier = next((st for st, rec in signed_decisions(engine, run_id).items()
                    if st != d.stage and rec.action == "approved" and _signer(rec) == name), None)
    if earlier is not None and d.decision == "approve":
        return f"{d.approver} already signed stage {earlier} of this run; another person must sign {d.stage}"
    return None


def _signer(rec: audit.AuditRecord) -> str:
    """The approver of a decision record (its actor without the demo/standing mark), lower case."""
    return rec.actor.split(" [", 1)[0].strip().lower()


def signed_decisions(engine: Engine, run_id: str) -> dict[str, audit.AuditRecord]:
    """Each stage's decision as the run's genuine (signed) audit records hold it.

    This, not co_approvals, is what counts: a row a database writer inserts into
    co_approvals has no signed record behind it and decides nothing.
    """
    out: dict[str, audit.AuditRecord] = {}
    for rec in audit.trail(engine, run_id):
        if rec.step.startswith("approval:") and rec.action in ("approved", "rejected") \
                and audit.genuine(rec):
            out.setdefault(rec.step.split(":", 1)[1], rec)
    return out


def unbacked_rows(engine: Engine, run_id: str) -> list[dict[str, object]]:
    """co_approvals rows of the run without a signed audit record that says the same."""
    signed = signed_decisions(engine, run_id)
    out = []
    for row in decisions(engine, run_id):
        rec = signed.get(str(row["stage"]))
        if rec is None or rec.details.get("packet_digest") != row["packet_digest"] or \
                rec.action != ("approved" if row["decision"] == "approve" else "rejected"):
            out.append({"stage": row["stage"], "decision": row["decision"]})
    return out


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


def packet_digest(brief_digest: str, send_digest: str, qa_digest: str) -> str:
    """What an approval is bound to: the brief, every recipient as it will be sent, the QA."""
    return hashlib.sha256(f"{brief_digest}:{send_digest}:{qa_digest}".encode()).hexdigest()


def expires_at(since: dt.datetime, brief: Brief) -> dt.datetime:
    """When a wait that started at `since` expires."""
    return since + dt.timedelta(hours=brief.approval_timeout_hours)


@dataclass(frozen=True)
class StandingGrant:
    """An active standing approval of one stage of a recurring campaign (from signed records)."""

    grant_id: int  # the number of the audit record that granted it
    campaign_id: str
    stage: str
    granted_by: str
    granted_in_run: str
    granted_at: str


def _standing_records(engine: Engine, campaign_id: str) -> list[audit.AuditRecord]:
    """The genuine grant and revoke records of a campaign, in chain order."""
    t = audit_log
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(sa.or_(
            sa.and_(t.c.step.like("approval:%"), t.c.action == "approved"),
            sa.and_(t.c.step == "standing_approval", t.c.action == "revoked"),
        )).order_by(t.c.seq)).all()
    out = []
    for r in rows:
        rec = audit._record(r)
        if rec.details.get("campaign_id") == campaign_id and audit.genuine(rec):
            out.append(rec)
    return out


def active_standing(engine: Engine, campaign_id: str, stage: str) -> StandingGrant | None:
    """The stage's active standing approval: a signed grant with no signed revoke after it."""
    grant: StandingGrant | None = None
    for rec in _standing_records(engine, campaign_id):
        if rec.step == "standing_approval":
            if rec.details.get("stage") in (None, stage):
                grant = None
        elif rec.step == f"approval:{stage}" and rec.details.get("standing_granted"):
            assert rec.n is not None and rec.run_id is not None
            grant = StandingGrant(rec.n, campaign_id, stage, rec.actor.split(" [", 1)[0],
                                  rec.run_id, rec.created_at)
    return grant


def revoke_standing(engine: Engine, campaign_id: str, stage: str | None, approver: str) -> int:
    """Revoke the campaign's standing approvals (one stage or all) with a signed record;
    how many were active (0: nothing recorded)."""
    stages = {rec.step.split(":", 1)[1] for rec in _standing_records(engine, campaign_id)
              if rec.step.startswith("approval:")}
    active = [st for st in sorted(stages) if (stage is None or st == stage)
              and active_standing(engine, campaign_id, st) is not None]
    if active:
        audit.append(engine, run_id=None, step="standing_approval", action="revoked", actor=approver,
                     details={"campaign_id": campaign_id, "stage": stage, "grants": len(active)})
    return len(active)


def refused_attempts(engine: Engine, run_id: str, stage: str) -> int:
    """How many decisions for the stage were refused (numbers the next wait)."""

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.run_id == run_id, audit_log.c.step == f"approval:{stage}",
            audit_log.c.action == "refused")).scalar_one())


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
    audience_digest: str  # the send digest: every recipient as it will be sent
    packet_digest: str
    cells: tuple[tuple[str, str | None, int], ...]  # (cell, offer, recipients)
    samples: tuple[dict[str, Any], ...] = field(default=())  # masked: initials only
    timeout_hours: float = 24.0
    # against the campaign's previous sent run and recent runs, what moved first (docs/watch.md)
    watch: tuple[str, ...] = field(default=())
    # an SMS run: the longest message in segments, quiet hours, deferred send times (docs/sms.md)
    sms: tuple[str, ...] = field(default=())


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
    a_digest = qa.send_digest or digest_audience(wh.engine, run_id, b)[0]
    return Packet(
        run_id=run_id, stage=stage, campaign_id=b.campaign_id, name=b.name, owner=b.owner,
        objective=b.objective, approvers=tuple(_stage(b, stage).approvers),
        standing_allowed=b.standing_approval == "allowed", send_at=b.send_at, waterfall=wf, qa=qa,
        brief_digest=run.brief_digest, audience_digest=a_digest,
        packet_digest=packet_digest(run.brief_digest, a_digest, qa.qa_digest),
        cells=tuple((c.name, c.offer_code, wf.cells.get(c.name, 0)) for c in b.cells),
        samples=tuple(sample_rows(wh.engine, run_id)), timeout_hours=b.approval_timeout_hours,
        watch=tuple(watch.compare(wh.engine, run_id, b).lines()),
        sms=sms_packet_lines(wh.engine, run_id, b, runs.send_time(b).replace(tzinfo=dt.UTC)),
    )


@dataclass(frozen=True)
class Wait:
    """An open approval wait: since when, until when."""

    run_id: str
    stage: str
    since: dt.datetime
    deadline: dt.datetime
    attempt: int  # waits for this stage so far, refused decisions included (keys each pause)
    packet_digest: str  # what the stage's approvers are asked to approve
    approvers: tuple[str, ...] = ()  # who may decide the stage


def open_wait(wh: Warehouse, run_id: str, stage: str, digest: str, in_process: bool = True) -> Wait:
    """Mark the run as waiting for the stage (idempotent on replay); when the wait began and ends.

    ``in_process``: the run pauses in this process (an ad hoc run), whose host and pid the
    register keeps, so a wait whose process died is found and closed (:func:`close_abandoned`).
    """
    run = runs.get_run(wh.engine, run_id)
    if run.status == runs.AWAITING and run.waiting_stage == stage and run.waiting_since:
        since = run.waiting_since
    else:
        since = runs.utcnow()
        runs.set_status(wh.engine, run_id, runs.AWAITING, waiting_stage=stage, waiting_since=since,
                        waiting_host=socket.gethostname() if in_process else None,
                        waiting_pid=os.getpid() if in_process else None)
        audit.append(wh.engine, run_id=run_id, step=f"approval:{stage}", action="waiting", actor=SYSTEM,
                     details={"packet_digest": digest, "approvers": len(_stage(run.brief, stage).approvers)})
    return Wait(run_id, stage, since, expires_at(since, run.brief),
                refused_attempts(wh.engine, run_id, stage) + 1, digest,
                tuple(_stage(run.brief, stage).approvers))


def waiting_message(run_id: str, stage: str, approvers: list[str] | tuple[str, ...],
                    deadline: dt.datetime, run_link: str | None) -> str:
    """What a paused run prints: who must decide which stage, the exact commands, the UI link."""
    names = list(approvers)
    who = names[0] if len(names) == 1 else f"one of {', '.join(names)}"
    as_ = names[0] if len(names) == 1 else "NAME"
    lines = [
        f"run {run_id} waits for stage {stage} until {deadline:%Y-%m-%d %H:%M} UTC: {who} must approve "
        "or reject it, from another terminal:",
        f"  CAMPAIGNOPS_APPROVER_KEY=... campaignops approve {run_id} --as {as_}",
        f"  campaignops reject {run_id} --as {as_} --reason \"why\"",
    ]
    if run_link:
        lines.append(f"  or in the Prefect UI: {run_link} (Resume, with the approver's name, "
                     "decision and key)")
    else:
        lines.append("  no Prefect server is running, so no other terminal can reach this run: stop it "
                     "(Ctrl-C), start one with `campaignops server start`, then run again")
    return "\n".join(lines)


@dataclass(frozen=True)
class Judgement:
    """A submitted decision as judged: accepted or refused (with why)."""

    accepted: bool
    decision: str
    approver: str
    why: str | None = None


def channel_proof(key: bytes, run_id: str, stage: str, wait_key: str, approver: str,
                  decision: str) -> str:
    """What campaignops' own submitter adds to a decision: a MAC with the audit key.

    Prefect's open-source API has no accounts, so the channel of a decision cannot be
    taken from the input (anyone can claim "cli"). A decision that carries this proof came
    from a process holding the audit key (the campaignops CLI or demo on an ops machine);
    any other came through Prefect's UI or API.
    """
    return audit.sign(key, f"decision\x1f{run_id}\x1f{stage}\x1f{wait_key}\x1f{approver}\x1f{decision}")


def observed_via(claimed: str, run_id: str, stage: str, wait_key: str, approver: str,
                 decision: str) -> str:
    """Where a decision came from, as observed: "cli" with a valid proof, else "ui-or-api"."""
    _, _, proof = claimed.partition(":")
    if proof:
        expected = channel_proof(audit._key(None), run_id, stage, wait_key, approver, decision)
        if hmac.compare_digest(proof, expected):
            return "cli"
    return "ui-or-api"


def record_decision(wh: Warehouse, run_id: str, stage: str, approver: str, decision: str, reason: str,
                    key: str, via: str, digest: str, standing: bool = False,
                    wait_key: str = "") -> Judgement:
    """Judge a submitted decision against the approval rules; record and audit it either way.

    ``via`` is the submitter's claim; the record keeps it as ``claimed_via`` and records as
    ``via`` what was observed (see :func:`observed_via`).
    """
    engine = wh.engine
    seen = observed_via(via, run_id, stage, wait_key, approver.strip(), decision)
    claimed = via.partition(":")[0][:32]
    run = runs.get_run(engine, run_id)
    d = Decision(stage=stage, approver=approver.strip(), decision=decision, reason=reason or "",
                 key_ok=verify_key(engine, approver.strip(), key), standing=standing)
    why = refusal(engine, run.brief, run_id, d)
    kind = approver_kind(engine, d.approver)
    actor = f"{d.approver} [demo approver]" if kind == "demo" else d.approver
    if why is not None:
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="refused", actor=actor,
                     details={"decision": decision, "why": why, "via": seen, "claimed_via": claimed,
                              "wait_key": wait_key})
        return Judgement(False, decision, d.approver, why)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}",
                 action="approved" if decision == "approve" else "rejected",
                 actor=actor, details={"packet_digest": digest, "reason": d.reason or None,
                                       "via": seen, "claimed_via": claimed, "demo": kind == "demo",
                                       "standing_granted": standing and decision == "approve",
                                       "campaign_id": run.campaign_id, "wait_key": wait_key})
    _store_decision(engine, run_id, d, digest)  # an index for queries; the signed record counts
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
    earlier = signed_decisions(wh.engine, run_id).get(stage)
    if earlier is not None:
        if earlier.action == "rejected":
            raise ApprovalRejected(f"stage {stage} rejected by {earlier.actor}: "
                                   f"{earlier.details.get('reason')}")
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
    audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="approved",
                 actor=f"{grant.granted_by} [standing approval]",
                 details={"packet_digest": digest, "via": "standing", "grant_id": grant.grant_id,
                          "granted_in_run": grant.granted_in_run, "campaign_id": run.campaign_id})
    _store_decision(engine, run_id, Decision(stage, grant.granted_by, "approve", "", True), digest)
    runs.set_status(engine, run_id, runs.APPROVED, waiting_stage=None)
    return grant.granted_by


def expire(wh: Warehouse, run_id: str, stage: str) -> ApprovalExpired:
    """Record (once) that a wait ran past its timeout: the run expires and sends nothing."""
    if runs.get_run(wh.engine, run_id).status != runs.EXPIRED:
        runs.set_status(wh.engine, run_id, runs.EXPIRED, waiting_stage=None)
        audit.append(wh.engine, run_id=run_id, step=f"approval:{stage}", action="expired", actor=SYSTEM,
                     details={})
    return ApprovalExpired(f"approval wait for stage {stage} expired; the run did not send")


def _process_gone(host: str | None, pid: int | None) -> bool:
    """True when the waiting process was on this host and is no longer alive."""
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def close_abandoned(wh: Warehouse, prefect_states: dict[str, str] | None = None) -> list[str]:
    """Close waits that can no longer proceed; their run ids (each failed, with an audit record).

    A wait is abandoned when the process an ad hoc run paused in is gone (same host), or
    when Prefect (``prefect_states``: run id -> state type, where known) no longer holds the
    flow run paused: it crashed, failed, was cancelled or was forced on without input.
    """
    closed = []
    for r in runs.waiting_runs(wh.engine):
        state = (prefect_states or {}).get(r.run_id)
        why = None
        if _process_gone(r.waiting_host, r.waiting_pid):
            why = f"the process that waited for stage {r.waiting_stage} is gone"
        elif state in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING", "COMPLETED"):
            why = f"Prefect holds the flow run {state.lower()}, not waiting for stage {r.waiting_stage}"
        if why is not None:
            runs.record_failure(wh.engine, r.run_id, runs.FAILED, f"abandoned: {why}")
            closed.append(r.run_id)
    return closed


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
