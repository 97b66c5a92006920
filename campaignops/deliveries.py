"""Who got what: queries over the permanent delivery record (co_deliveries), counts by default.

``co_deliveries`` holds every recipient a run handed off (from the outbox as posted, with
the ESP's outcome: accepted, rejected with its reason, or released for a file drop); the
holdout (``control``) is the run's ``co_audience`` rows that were kept back. Every query
runs in the warehouse as one ``GROUP BY``; nothing but counts comes back to Python.

Listing addresses is an access to personal data: only :func:`export` writes them, to a
new CSV file (mode 600) that the caller names, and the export itself is an audit record
(who, what filter, how many rows). No address is returned, printed or logged.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.errors import CampaignOpsError, NotFound
from campaignops.schema import audience, deliveries, ledger, offers
from campaignops.schema import runs as runs_table

Outcome = Literal["accepted", "rejected", "control"]
OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "control")
# What "accepted" covers: the ESP's 202 per recipient, or a file drop that was released.
DELIVERED = ("accepted", "released")
EXPORT_COLUMNS = ("run_id", "customer_id", "address", "cell", "offer_code", "outcome", "reason",
                  "is_seed")


@dataclass(frozen=True)
class Filter:
    """What a query selects (no personal data: run, cell, offer, outcome, campaign, since)."""

    run_id: str | None = None
    cell: str | None = None
    offer_code: str | None = None
    outcome: str | None = None
    campaign_id: str | None = None
    since: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The filter as an audit record's details (set fields only)."""
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v)
                for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class CountRow:
    """One group of recipients: customers and seed addresses counted apart."""

    campaign_id: str | None
    run_id: str | None
    cell: str | None
    offer_code: str | None
    outcome: str
    customers: int
    seeds: int


def require_run(engine: Engine, run_id: str) -> runs.RunRecord:
    """The run, or NotFound naming it."""
    try:
        return runs.get_run(engine, run_id)
    except CampaignOpsError:
        raise NotFound(f"no run {run_id}: check the id (campaignops kpis --per-run lists runs)") from None


def check_run_filter(engine: Engine, run_id: str, cell: str | None, offer_code: str | None,
                     outcome: str | None) -> runs.RunRecord:
    """The run, after checking the cell, offer and outcome against its brief; one line per problem."""
    run = require_run(engine, run_id)
    cells = [c.name for c in run.brief.cells]
    if cell is not None and cell not in cells:
        raise CampaignOpsError(f"--cell: run {run_id} has no cell {cell!r}; its cells are "
                               f"{', '.join(cells)}")
    if offer_code is not None and offer_code not in run.brief.offer_codes:
        listed = ", ".join(run.brief.offer_codes) or "none"
        raise CampaignOpsError(f"--offer: run {run_id} carried no offer {offer_code!r}; its offers "
                               f"are {listed}")
    if outcome is not None and outcome not in OUTCOMES:
        raise CampaignOpsError(f"--outcome: {outcome!r} is not an outcome; use {', '.join(OUTCOMES)}")
    if outcome == "control" and (cell is not None or offer_code is not None):
        raise CampaignOpsError("--outcome control: the holdout has no cell or offer; drop --cell "
                               "and --offer")
    return run


def _delivery_where(f: Filter) -> list[Any]:
    d = deliveries.c
    where: list[Any] = []
    if f.run_id is not None:
        where.append(d.run_id == f.run_id)
    if f.cell is not None:
        where.append(d.cell == f.cell)
    if f.offer_code is not None:
        where.append(d.offer_code == f.offer_code)
    if f.outcome == "accepted":
        where.append(d.outcome.in_(DELIVERED))
    elif f.outcome == "rejected":
        where.append(d.outcome == "rejected")
    return where


def _sent_at() -> Any:
    """When a recipient's batch went out: the ESP's acknowledgement, or the run's last update
    (a file drop has no ledger)."""
    return sa.func.coalesce(ledger.c.acked_at, runs_table.c.updated_at)


def _joined() -> Any:
    d = deliveries.c
    return (deliveries.join(runs_table, runs_table.c.run_id == d.run_id)
            .outerjoin(ledger, sa.and_(ledger.c.run_id == d.run_id, ledger.c.batch_seq == d.batch_seq)))


def _delivery_query(f: Filter, columns: list[Any]) -> sa.Select[Any]:
    where = _delivery_where(f)
    if f.campaign_id is not None:
        where.append(runs_table.c.campaign_id == f.campaign_id)
    if f.since is not None:
        where.append(_sent_at() >= f.since)
    return sa.select(*columns).select_from(_joined()).where(*where)


def _outcome_label(outcome: str) -> str:
    return "accepted" if outcome in DELIVERED else outcome


def _grouped(conn: Any, f: Filter) -> list[CountRow]:
    d = deliveries.c
    seed = sa.case((d.is_seed == sa.true(), 1), else_=0)
    cust = sa.case((d.is_seed == sa.true(), 0), else_=1)
    keys = [runs_table.c.campaign_id, d.run_id, d.cell, d.offer_code, d.outcome]
    q = _delivery_query(f, [*keys, sa.func.sum(cust), sa.func.sum(seed)]).group_by(*keys)
    merged: dict[tuple[Any, ...], list[int]] = {}
    for campaign, run_id, cell, offer, outcome, n_cust, n_seed in conn.execute(q):
        k = (campaign, run_id, cell, offer, _outcome_label(outcome))
        acc = merged.setdefault(k, [0, 0])
        acc[0] += int(n_cust or 0)
        acc[1] += int(n_seed or 0)
    return [CountRow(*k, *v) for k, v in merged.items()]


def _control(conn: Any, run_id: str, campaign_id: str) -> list[CountRow]:
    n = conn.execute(sa.select(sa.func.count()).select_from(audience).where(
        audience.c.run_id == run_id, audience.c.outcome == "control")).scalar_one()
    return [CountRow(campaign_id, run_id, None, None, "control", int(n), 0)] if n else []


def _sorted(rows: list[CountRow]) -> list[CountRow]:
    return sorted(rows, key=lambda r: (r.campaign_id or "", r.run_id or "", OUTCOMES.index(r.outcome),
                                       r.cell or "", r.offer_code or ""))


def recipient_counts(engine: Engine, run_id: str, cell: str | None = None,
                     offer_code: str | None = None, outcome: str | None = None) -> list[CountRow]:
    """A run's recipients counted by cell, offer and outcome (accepted, rejected, control)."""
    run = check_run_filter(engine, run_id, cell, offer_code, outcome)
    f = Filter(run_id=run_id, cell=cell, offer_code=offer_code, outcome=outcome)
    with engine.connect() as conn:
        rows = [] if outcome == "control" else _grouped(conn, f)
        if outcome in (None, "control") and cell is None and offer_code is None:
            rows += _control(conn, run_id, run.campaign_id)
    return _sorted(rows)


def require_offer(engine: Engine, offer_code: str) -> None:
    """NotFound unless the offer is in the warehouse's offers table."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(offers.c.offer_code).where(offers.c.offer_code == offer_code)).first()
    if found is None:
        raise NotFound(f"--offer: no offer {offer_code!r} in the warehouse's offers table")


def who_received(engine: Engine, offer_code: str, campaign_id: str | None = None,
                 since: dt.datetime | None = None) -> list[CountRow]:
    """Who the ESP accepted an offer for, counted by campaign, run and cell."""
    require_offer(engine, offer_code)
    f = Filter(offer_code=offer_code, outcome="accepted", campaign_id=campaign_id,
               since=None if since is None else runs.utc_naive(since))
    with engine.connect() as conn:
        return _sorted(_grouped(conn, f))


def total(rows: list[CountRow]) -> tuple[int, int]:
    """(customers, seeds) over the rows."""
    return sum(r.customers for r in rows), sum(r.seeds for r in rows)


# -- the export: addresses, to a private file, audited ---------------------------------------

def _export_rows(engine: Engine, f: Filter) -> Iterator[tuple[Any, ...]]:
    d = deliveries.c
    if f.outcome == "control":
        a = audience.c
        q: Any = (sa.select(a.run_id, a.customer_id, a.address_key, a.cell, a.offer_code,
                            sa.literal("control"), sa.null(), a.is_seed)
                  .where(a.run_id == f.run_id, a.outcome == "control").order_by(a.customer_id))
    else:
        q = _delivery_query(f, [d.run_id, d.customer_id, d.address_key, d.cell, d.offer_code,
                                d.outcome, d.reason, d.is_seed]
                            ).order_by(d.run_id, d.is_seed, d.customer_id, d.address_key)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=5000).execute(q):
            yield tuple(row)


def export(engine: Engine, f: Filter, out: Path, actor: str, what: str) -> int:
    """Write the selected recipients' addresses to a new CSV (mode 600); audited; rows written.

    The file must not exist (an export never overwrites). The audit record names who, what
    filter, how many rows and the file's SHA-256, never an address. If the record cannot be
    written the file is removed.
    """
    out = out.expanduser()
    if not out.parent.is_dir():
        raise CampaignOpsError(f"--out: folder {out.parent} does not exist; create it or pick another")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CampaignOpsError(f"--out: {out} already exists; an export never overwrites, "
                               "pick a new file name") from None
    h = hashlib.sha256()
    n = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(EXPORT_COLUMNS)
            for row in _export_rows(engine, f):
                w.writerow(["" if v is None else v for v in row])
                n += 1
        os.chmod(out, 0o600)
        h.update(out.read_bytes())
        audit.append(engine, run_id=f.run_id, step="audit", action="exported", actor=actor,
                     details={"what": what, "filter": f.as_dict(), "rows": n,
                              "file": out.name, "sha256": h.hexdigest()})
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return n
