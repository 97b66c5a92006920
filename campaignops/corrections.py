"""Correction campaigns: an audience that starts from a past run, linked to its incident.

A brief's ``audience.from_run`` selects those a past run handed off (by cell, offer and
ESP outcome, from the permanent delivery record co_deliveries); ``audience.missed_by``
selects those eligible under the brief now, minus everyone the run delivered to or held
out. Both are SQL clauses over ``customers`` that segmentation adds to the brief's rules:
consent, suppressions, QA, approvals and the handoff apply as for any run.

A correction is sent only through ``campaignops remediate INCIDENT``: the run is linked to
the incident in co_corrections (and the audit) at intake, and segmentation leaves out
(``already_corrected``) everyone an earlier correction of the same incident reached.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.brief import Brief
from campaignops.deliveries import DELIVERED
from campaignops.errors import CampaignOpsError, RemediationRefused
from campaignops.schema import audience, corrections, customers, deliveries
from campaignops.schema import runs as runs_table

SYSTEM = "campaignops"
STEP = "incident"  # the incident's own audit step: its report lists every correction


def _sent(engine: Engine, run_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(deliveries.c.run_id).where(deliveries.c.run_id == run_id)
                            .limit(1)).first() is not None


def source_problems(engine: Engine, brief: Brief) -> list[str]:
    """What is wrong with a correction's source run (unknown, never sent, no such cell or
    offer): one line each, naming the field; empty for an ordinary brief."""
    aud = brief.audience
    run_id = aud.source_run
    if run_id is None:
        return []
    where = "audience.from_run.run" if aud.from_run is not None else "audience.missed_by"
    try:
        run = runs.get_run(engine, run_id)
    except CampaignOpsError:
        return [f"{where}: no run {run_id} in the run register; check the id "
                "(`campaignops kpis --per-run` lists runs)"]
    if not _sent(engine, run_id):
        return [f"{where}: run {run_id} never sent (status {run.status}); a correction starts "
                "from a run that handed off"]
    problems: list[str] = []
    if aud.from_run is not None:
        cells = [c.name for c in run.brief.cells]
        for i, cell in enumerate(aud.from_run.cells):
            if cell not in cells:
                problems.append(f"audience.from_run.cells[{i}]: run {run_id} has no cell {cell!r}; "
                                f"its cells are {', '.join(cells)}")
        offers = run.brief.offer_codes
        for i, code in enumerate(aud.from_run.offers):
            if code not in offers:
                problems.append(f"audience.from_run.offers[{i}]: run {run_id} carried no offer "
                                f"{code!r}; its offers are {', '.join(offers) or 'none'}")
    return problems


def source_filter(brief: Brief) -> Any:
    """The WHERE clause over customers of a correction's source run, or None."""
    aud, d, cid = brief.audience, deliveries.c, customers.c.customer_id
    if aud.from_run is not None:
        fr = aud.from_run
        outcomes = DELIVERED if fr.outcome == "accepted" else ("rejected",)
        q = sa.select(d.customer_id).where(d.run_id == fr.run, d.is_seed == sa.false(),
                                           d.customer_id.is_not(None), d.outcome.in_(outcomes))
        if fr.cells:
            q = q.where(d.cell.in_(fr.cells))
        if fr.offers:
            q = q.where(d.offer_code.in_(fr.offers))
        return cid.in_(q)
    if aud.missed_by is not None:
        delivered = sa.select(d.customer_id).where(
            d.run_id == aud.missed_by, d.is_seed == sa.false(), d.customer_id.is_not(None),
            d.outcome.in_(DELIVERED))
        # The run's holdout was kept back on purpose: not missed, and it stays a holdout.
        held = sa.select(audience.c.customer_id).where(
            audience.c.run_id == aud.missed_by, audience.c.outcome == "control",
            audience.c.customer_id.is_not(None))
        return sa.and_(cid.not_in(delivered), cid.not_in(held))
    return None


def already_corrected(incident_id: str, run_id: str) -> Any:
    """Over customers: reached by an earlier correction run of the incident (delivered, or
    still on its way: approved into a handoff not yet reconciled counts as reached)."""
    c, d, a = corrections.c, deliveries.c, audience.c
    earlier = sa.select(c.run_id).where(c.incident_id == incident_id, c.run_id != run_id)
    delivered = sa.select(d.customer_id).where(
        d.run_id.in_(earlier), d.is_seed == sa.false(), d.customer_id.is_not(None),
        d.outcome.in_(DELIVERED))
    in_flight = sa.select(a.customer_id).where(
        a.run_id.in_(earlier.where(c.run_id.in_(sa.select(runs_table.c.run_id).where(
            runs_table.c.status.in_((runs.APPROVED, runs.HANDING_OFF)))))),
        a.outcome == "send", a.customer_id.is_not(None))
    return sa.or_(customers.c.customer_id.in_(delivered), customers.c.customer_id.in_(in_flight))


def incident_of(engine: Engine, run_id: str) -> str | None:
    """The incident a run corrects, or None."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(corrections.c.incident_id)
                             .where(corrections.c.run_id == run_id)).scalar()
    return None if found is None else str(found)


# A correction run in one of these has finished: another may start after it.
DONE = (runs.SENT, runs.QA_BLOCKED, runs.REJECTED, runs.EXPIRED, runs.FAILED, runs.COUNTED)


def check_remediation(engine: Engine, incident_id: str, brief: Brief,
                      run_id: str | None = None) -> None:
    """Refuse (RemediationRefused, one line) a correction the incident cannot take: unknown or
    closed incident, a brief that is no correction, a correction of another run, or another
    correction of the incident still under way (run_id: the run being started)."""
    from campaignops.incidents import OPEN, get_incident

    inc = get_incident(engine, incident_id)
    if inc.status != OPEN:
        raise RemediationRefused(f"incident {incident_id} is closed: open a new incident to "
                                 "correct the run again")
    source = brief.audience.source_run
    if source is None:
        raise RemediationRefused("--brief: not a correction: set audience.from_run or "
                                 f"audience.missed_by to run {inc.run_id} (docs/remediation.md)")
    if source != inc.run_id:
        raise RemediationRefused(f"--brief: the correction starts from run {source}, but incident "
                                 f"{incident_id} is about run {inc.run_id}; start from that run")
    c, r = corrections.c, runs_table.c
    with engine.connect() as conn:
        busy = conn.execute(
            sa.select(c.run_id, r.status).select_from(corrections.join(runs_table, r.run_id == c.run_id))
            .where(c.incident_id == incident_id, c.run_id != (run_id or ""), r.status.not_in(DONE))
            .limit(1)).first()
    if busy is not None:
        raise RemediationRefused(f"incident {incident_id}: correction run {busy[0]} is still under way "
                                 f"(status {busy[1]}); decide its approvals first")


def link_correction(engine: Engine, run_id: str, incident_id: str, brief: Brief) -> None:
    """Record the run as a correction of the incident (co_corrections and the audit); a
    retried intake of the same run is a no-op."""
    check_remediation(engine, incident_id, brief, run_id)
    existing = incident_of(engine, run_id)
    if existing == incident_id:
        return
    if existing is not None:
        raise RemediationRefused(f"run {run_id} already corrects incident {existing}")
    with engine.begin() as conn:
        conn.execute(sa.insert(corrections).values(incident_id=incident_id, run_id=run_id,
                                                   created_at=runs.utcnow()))
    audit.append(engine, run_id=run_id, step=STEP, action="correction_started", actor=SYSTEM,
                 details={"incident_id": incident_id, "source_run": brief.audience.source_run,
                          "audience": "from_run" if brief.audience.from_run else "missed_by",
                          "waive_frequency_cap": brief.waive_frequency_cap})


def nobody_left(engine: Engine, run_id: str | None, incident_id: str,
                already: int) -> RemediationRefused:
    """The refusal of a correction that reaches nobody (audited when a run was started):
    nothing is sent."""
    if run_id is not None:
        audit.append(engine, run_id=run_id, step=STEP, action="correction_refused", actor=SYSTEM,
                     details={"incident_id": incident_id, "already_corrected": already})
    why = (f"{already:,} already reached by an earlier correction of it" if already
           else "the correction's audience is empty")
    return RemediationRefused(f"incident {incident_id}: nobody is left to correct ({why}); "
                              "nothing sent")
