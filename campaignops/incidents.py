"""Incidents: a send that went wrong, reported against its run, with its exact impact.

``open_incident`` records what was reported (``co_incidents``) and appends a signed audit
record; the CLI then publishes the event ``campaignops.incident.opened`` (routed by the
installed automations to the brief's owner, and to legal for the kinds that need it) and
the impact report as a Prefect artifact. :func:`impact_report` says who was affected
(counts by cell and offer, from the permanent delivery record), who approved the run and
what they were shown (the packet digest), which QA checks passed, and what has been done
since (every incident record in the audit, and each correction run). Counts only: the
report, the event and the artifact hold no address.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.deliveries import CountRow, check_run_filter, recipient_counts
from campaignops.errors import CampaignOpsError, NotFound, RemediationRefused
from campaignops.schema import corrections, deliveries, incidents
from campaignops.schema import runs as runs_table
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

KINDS = ("wrong_offer", "wrong_audience", "missed", "wrong_content", "other")
OPEN, CLOSED = "open", "closed"
STEP = "incident"
MAX_NOTE = 2000
# A note is the reporter's words about the send, not about a person: no address, no phone.
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_PHONE = re.compile(r"\+?\d[\d ().-]{7,}\d")


@dataclass(frozen=True)
class Incident:
    """One incident as co_incidents holds it."""

    incident_id: str
    run_id: str
    campaign_id: str
    kind: str
    cell: str | None
    offer_code: str | None
    reported_by: str
    note: str
    status: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None = None
    closed_by: str | None = None
    close_note: str | None = None


@dataclass(frozen=True)
class Approval:
    """A stage's signed decision on the run: who, what they were shown (the packet digest)."""

    stage: str
    approver: str
    decision: str
    packet_digest: str
    at: str


@dataclass(frozen=True)
class Correction:
    """A run that corrects the incident, and what it delivered."""

    run_id: str
    status: str
    delivered: int


@dataclass(frozen=True)
class ImpactReport:
    """The incident's impact, counts only."""

    incident: Incident
    route: tuple[str, ...]
    affected: list[CountRow]
    approvals: list[Approval]
    qa_passed: bool | None
    qa_checks: tuple[str, ...]
    qa_warnings: tuple[str, ...]
    actions: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)

    @property
    def affected_customers(self) -> int:
        """Customers the ESP accepted the faulty send for (seeds apart)."""
        return sum(r.customers for r in self.affected if r.outcome == "accepted")


def route(settings: Settings, kind: str) -> tuple[str, ...]:
    """Who the opened event is routed to: the brief's owner, and legal for the kinds that need it."""
    return ("owner", "legal") if kind in settings.legal_kinds else ("owner",)


def _line(value: str, flag: str, limit: int = 254) -> str:
    v = value.strip()
    if not v or "\n" in v or len(v) > limit:
        raise CampaignOpsError(f"{flag}: write one line of 1-{limit} characters")
    return v


def check_note(note: str, flag: str = "--note") -> str:
    """The note, checked: 1-2000 characters, no email address or phone number."""
    n = note.strip()
    if not n or len(n) > MAX_NOTE:
        raise CampaignOpsError(f"{flag}: write 1-{MAX_NOTE} characters saying what went wrong")
    if _EMAIL.search(n) or _PHONE.search(n):
        raise CampaignOpsError(f"{flag}: holds what looks like an address or phone number; describe "
                               "the incident without personal data (name customers by customer id)")
    return n


def _sent(engine: Engine, run_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(deliveries.c.run_id).where(deliveries.c.run_id == run_id)
                            .limit(1)).first() is not None


def open_incident(engine: Engine, settings: Settings, run_id: str, kind: str, reported_by: str,
                  note: str, cell: str | None = None, offer_code: str | None = None) -> Incident:
    """Record an incident against a run that sent; audited. Nothing is sent."""
    if kind not in KINDS:
        raise CampaignOpsError(f"--kind: {kind!r} is not a kind; use {', '.join(KINDS)}")
    who = _line(reported_by, "--reported-by")
    text = check_note(note)
    run = check_run_filter(engine, run_id, cell, offer_code, None)
    if not _sent(engine, run_id):
        raise RemediationRefused(f"run {run_id} never sent (status {run.status}): there is no send "
                                 "to report an incident against")
    inc = Incident(f"inc-{uuid.uuid4().hex[:12]}", run_id, run.campaign_id, kind, cell, offer_code,
                   who, text, OPEN, runs.utcnow())
    with engine.begin() as conn:
        conn.execute(sa.insert(incidents).values(
            incident_id=inc.incident_id, run_id=run_id, campaign_id=inc.campaign_id, kind=kind,
            cell=cell, offer_code=offer_code, reported_by=who, note=text, status=OPEN,
            opened_at=inc.opened_at))
    audit.append(engine, run_id=run_id, step=STEP, action="opened", actor=who, details={
        "incident_id": inc.incident_id, "kind": kind, "cell": cell, "offer_code": offer_code,
        "route": list(route(settings, kind))})
    return inc


def _incident(r: Any) -> Incident:
    return Incident(r.incident_id, r.run_id, r.campaign_id, r.kind, r.cell, r.offer_code,
                    r.reported_by, r.note, r.status, r.opened_at, r.closed_at, r.closed_by,
                    r.close_note)


def get_incident(engine: Engine, incident_id: str) -> Incident:
    """The incident, or NotFound naming it."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(incidents).where(incidents.c.incident_id == incident_id)).first()
    if r is None:
        raise NotFound(f"no incident {incident_id}: `campaignops incident list` shows them")
    return _incident(r)


def list_incidents(engine: Engine, status: str | None = None) -> list[Incident]:
    """Incidents, newest first (only open or closed ones when asked)."""
    q = sa.select(incidents).order_by(incidents.c.opened_at.desc(), incidents.c.incident_id)
    if status is not None:
        q = q.where(incidents.c.status == status)
    with engine.connect() as conn:
        return [_incident(r) for r in conn.execute(q)]


def close_incident(engine: Engine, incident_id: str, by: str, note: str) -> Incident:
    """Close an open incident; audited."""
    inc = get_incident(engine, incident_id)
    who = _line(by, "--as")
    text = check_note(note)
    if inc.status != OPEN:
        raise RemediationRefused(f"incident {incident_id} is already closed (by {inc.closed_by})")
    now = runs.utcnow()
    with engine.begin() as conn:
        done = conn.execute(sa.update(incidents).where(
            incidents.c.incident_id == incident_id, incidents.c.status == OPEN).values(
            status=CLOSED, closed_at=now, closed_by=who, close_note=text)).rowcount
    if done != 1:
        raise RemediationRefused(f"incident {incident_id} was closed meanwhile")
    audit.append(engine, run_id=inc.run_id, step=STEP, action="closed", actor=who,
                 details={"incident_id": incident_id})
    return get_incident(engine, incident_id)


def incident_records(engine: Engine, incident_id: str | None = None) -> list[audit.AuditRecord]:
    """The genuine incident records of the audit (of one incident when given), in order."""
    return [rec for rec in audit.of_step(engine, STEP) if audit.genuine(rec)
            and (incident_id is None or rec.details.get("incident_id") == incident_id)]


def correction_runs(engine: Engine, incident_id: str) -> list[Correction]:
    """The incident's correction runs, oldest first, with what each delivered."""
    c, d = corrections.c, deliveries.c
    delivered = (sa.select(sa.func.count()).where(d.run_id == c.run_id, d.is_seed == sa.false(),
                                                  d.outcome.in_(("accepted", "released")))
                 .scalar_subquery())
    q = (sa.select(c.run_id, runs_table.c.status, delivered)
         .select_from(corrections.join(runs_table, runs_table.c.run_id == c.run_id))
         .where(c.incident_id == incident_id).order_by(c.created_at, c.run_id))
    with engine.connect() as conn:
        return [Correction(r, s, int(n)) for r, s, n in conn.execute(q)]


def impact_report(engine: Engine, settings: Settings, incident_id: str) -> ImpactReport:
    """Who the incident affected (counts), who approved what, what QA passed, what was done since."""
    from campaignops.approval import signed_decisions

    inc = get_incident(engine, incident_id)
    affected = [r for r in recipient_counts(engine, inc.run_id, inc.cell, inc.offer_code)
                if r.outcome != "control"]
    approvals = [Approval(stage, rec.actor, rec.action, str(rec.details.get("packet_digest", "")),
                          rec.created_at[:19])
                 for stage, rec in signed_decisions(engine, inc.run_id).items()]
    qa = audit.latest(engine, inc.run_id, "qa", ("passed", "blocked"))
    qa_ok = qa is not None and audit.genuine(qa)
    applied = tuple(qa.details.get("applied", ())) if qa is not None and qa_ok else ()
    failed = set(qa.details.get("failed_critical", ())) if qa is not None and qa_ok else set()
    actions = [{"at": r.created_at[:19], "action": r.action, "actor": r.actor, "run": r.run_id}
               for r in incident_records(engine, incident_id)]
    return ImpactReport(
        incident=inc, route=route(settings, inc.kind), affected=affected, approvals=approvals,
        qa_passed=bool(qa.details.get("passed")) if qa is not None and qa_ok else None,
        qa_checks=tuple(c for c in applied if c not in failed),
        qa_warnings=tuple(qa.details.get("warnings", ())) if qa is not None and qa_ok else (),
        actions=actions, corrections=correction_runs(engine, incident_id))


def event_payload(inc: Incident, settings: Settings) -> tuple[dict[str, str], dict[str, Any]]:
    """The opened event's resource (with the labels the automations match on) and payload."""
    routes = route(settings, inc.kind)
    resource = {
        "prefect.resource.id": f"campaignops.incident.{inc.incident_id}",
        "prefect.resource.name": inc.campaign_id,
        "campaignops.kind": inc.kind,
        "campaignops.campaign": inc.campaign_id,
        "campaignops.run": inc.run_id,
        "campaignops.route": ",".join(routes),
        "campaignops.legal": "true" if "legal" in routes else "false",
    }
    payload = {"incident_id": inc.incident_id, "run_id": inc.run_id, "kind": inc.kind,
               "cell": inc.cell, "offer_code": inc.offer_code, "route": list(routes)}
    return resource, payload


def plan_remediation(wh: Warehouse, incident_id: str, brief_path: Path) -> int:
    """Before any run starts: the customers a correction of the incident would send to now,
    or the one-line refusal (bad incident or brief, source run, nobody left)."""
    from campaignops import corrections
    from campaignops.brief import load_brief
    from campaignops.intake import check_correction, check_offers
    from campaignops.segmentation import count_sends

    brief = load_brief(brief_path)
    corrections.check_remediation(wh.engine, incident_id, brief)
    check_offers(wh, brief, brief_path.name)
    check_correction(wh, brief, brief_path.name, "full", incident_id)
    now = runs.utcnow()
    sends = count_sends(wh, brief, now, incident_id)
    if sends == 0:
        raise corrections.nobody_left(wh.engine, None, incident_id,
                                      count_sends(wh, brief, now) - sends)
    return sends
