"""Brief intake: the brief validated (structure, rules, offers at the send time), the run registered."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from campaignops import audit, corrections, runs
from campaignops.brief import Brief, load_brief
from campaignops.errors import BriefError
from campaignops.results import power_warning
from campaignops.schema import offers
from campaignops.warehouse import Warehouse

Mode = Literal["full", "qa", "count"]
SYSTEM = "campaignops"


@dataclass(frozen=True)
class Intake:
    """What intake accepted for a run (no personal data)."""

    run_id: str
    campaign_id: str
    brief_digest: str
    cells: tuple[str, ...]
    offers: tuple[str, ...]
    stages: tuple[str, ...]
    send_at: dt.datetime | None
    mode: Mode
    warnings: tuple[str, ...] = ()  # e.g. a holdout too small to measure the target

    @property
    def dry_run(self) -> bool:
        """True when the run only counts (or only checks): it never hands off."""
        return self.mode != "full"


def offer_problems(wh: Warehouse, brief: Brief, at: dt.datetime) -> list[str]:
    """Offers that do not exist in the warehouse or are not valid at the send time."""
    codes = brief.offer_codes
    if not codes:
        return []
    with wh.engine.connect() as conn:
        found = {r.offer_code: r for r in conn.execute(sa.select(offers).where(offers.c.offer_code.in_(codes)))}
    problems = []
    for i, cell in enumerate(brief.cells):
        code = cell.offer_code
        if code is None:
            continue
        where = f"cells[{i}].offer_code"
        o = found.get(code)
        if o is None:
            problems.append(f"{where}: offer {code!r} does not exist in the warehouse's offers table")
        elif o.valid_to < at:
            problems.append(f"{where}: offer {code!r} expired on {o.valid_to:%Y-%m-%d}, before the send; pick a current offer")
        elif o.valid_from > at:
            problems.append(f"{where}: offer {code!r} starts on {o.valid_from:%Y-%m-%d}, after the send; pick a current offer")
    return problems


def check_offers(wh: Warehouse, brief: Brief, source: str, now: dt.datetime | None = None) -> None:
    """Raise BriefError when an offer of the brief is unknown or not valid at the send time."""
    problems = offer_problems(wh, brief, runs.send_time(brief, now))
    if problems:
        raise BriefError(source, problems)


def check_correction(wh: Warehouse, brief: Brief, source: str, mode: Mode,
                     incident_id: str | None) -> None:
    """Raise BriefError when a correction's source run is unknown, never sent, or lacks a
    named cell or offer, or when a correction would send without its incident."""
    problems = corrections.source_problems(wh.engine, brief)
    if brief.audience.source_run is not None and mode == "full" and incident_id is None:
        problems.append("audience: a correction is sent only as `campaignops remediate INCIDENT "
                        "--brief FILE` (linked to its incident); `campaignops run --dry-run` counts it")
    if problems:
        raise BriefError(source, problems)


def accept_brief(wh: Warehouse, run_id: str, brief_path: str, mode: Mode = "full",
                 incident_id: str | None = None) -> Intake:
    """Validate the brief against the warehouse and register the run (a correction of the
    incident when given); audited either way."""
    source = Path(brief_path).name
    as_of = runs.utcnow()
    try:
        brief = load_brief(brief_path)
        check_offers(wh, brief, source, as_of)
        check_correction(wh, brief, source, mode, incident_id)
    except BriefError as err:
        audit.append(wh.engine, run_id=run_id, step="intake", action="rejected", actor=SYSTEM,
                     details={"source": source[:200], "problems": len(err.problems)})
        raise
    if incident_id is not None:
        corrections.check_remediation(wh.engine, incident_id, brief, run_id)
    runs.register_run(wh.engine, run_id, brief, source, as_of, dry_run=mode != "full")
    if incident_id is not None:
        corrections.link_correction(wh.engine, run_id, incident_id, brief)
    accepted = Intake(
        run_id=run_id, campaign_id=brief.campaign_id, brief_digest=brief.digest(),
        cells=tuple(c.name for c in brief.cells), offers=tuple(brief.offer_codes),
        stages=tuple(s.stage for s in brief.approvals), send_at=brief.send_at, mode=mode,
        warnings=tuple(w for w in (power_warning(brief),) if w is not None),
    )
    audit.append(wh.engine, run_id=run_id, step="intake", action="accepted", actor=SYSTEM, details={
        "campaign_id": accepted.campaign_id, "brief_digest": accepted.brief_digest,
        "cells": list(accepted.cells), "offers": list(accepted.offers),
        "stages": list(accepted.stages),
        "send_at": brief.send_at.isoformat() if brief.send_at else None, "dry_run": accepted.dry_run,
        **({"warnings": list(accepted.warnings)} if accepted.warnings else {}),
    })
    return accepted
