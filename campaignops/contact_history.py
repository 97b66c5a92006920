"""Contact history and the delivery record, written from what was handed off, once.

Both come from the run's outbox (the recipients exactly as posted, campaignops.handoff.outbox)
and the ledger's per-batch rejections, never from a second read of co_audience, which a
database writer could have edited since. ``co_deliveries`` keeps every recipient of the
run (seeds too) with the ESP's outcome; ``contact_history`` (the warehouse's table, which
feeds the next frequency cap) gets one row per treated customer the ESP accepted, and
``co_holdout_contacts`` one per holdout customer: their would-be sends, which the frequency
cap counts as it counts sends (docs/segmentation.md, "Symmetric contact pressure").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops import audit, runs
from campaignops.bulk import BulkInsert
from campaignops.errors import HandoffError
from campaignops.handoff.outbox import Outbox, discard, recipients
from campaignops.lifecycle import trigger
from campaignops.runs import utc_naive
from campaignops.schema import audience, contact_history, deliveries, holdout_contacts, ledger
from campaignops.schema import runs as runs_table
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"
CHUNK = 5000
log = logging.getLogger("campaignops.contact_history")


def _rejections(engine: Engine, run_id: str) -> dict[int, str]:
    """customer_id -> the ESP's reason, for every recipient the ESP rejected in this run."""
    out: dict[int, str] = {}
    with engine.connect() as conn:
        for (text,) in conn.execute(sa.select(ledger.c.rejections).where(
                ledger.c.run_id == run_id, ledger.c.rejections.is_not(None))):
            for r in json.loads(text):
                if r.get("customer_id") is not None:
                    out[int(r["customer_id"])] = str(r.get("reason"))
    return out


DELIVERY_COLUMNS = ("run_id", "batch_seq", "customer_id", "address_key", "cell", "offer_code",
                    "is_seed", "outcome", "reason")
HISTORY_COLUMNS = ("customer_id", "campaign_id", "run_id", "channel", "cell", "offer_code", "sent_at")


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _claim(conn: Connection, run_id: str) -> bool:
    """Flip co_runs.contact_history_written in this transaction; False when already done."""
    claimed = conn.execute(
        sa.update(runs_table)
        .where(runs_table.c.run_id == run_id,
               sa.or_(runs_table.c.contact_history_written == sa.false(),
                      runs_table.c.contact_history_written.is_(None)))
        .values(contact_history_written=True)
    ).rowcount
    if claimed == 1:
        return True
    if conn.execute(sa.select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)).first() is None:
        raise HandoffError(f"run {run_id} is not in co_runs: cannot write contact history")
    return False


def write_contact_history(engine: Engine, outbox: Outbox, campaign_id: str, sent_at: datetime,
                          batch_size: int, mode: str = "http", channel: str = "email") -> int:
    """Write the run's deliveries and contact history from the outbox, once; contact rows written.

    One transaction: the claim on co_runs, every co_deliveries row and every contact_history
    row; a second call finds the claim taken and writes nothing.
    """
    run_id = outbox.run_id
    when = utc_naive(sent_at)
    rejected = _rejections(engine, run_id) if mode == "http" else {}
    accepted = "accepted" if mode == "http" else "released"
    written = seq = 0
    with engine.begin() as conn:
        if not _claim(conn, run_id):
            return 0
        held = record_holdout(conn, run_id, campaign_id, channel, when)
        record = BulkInsert(conn, deliveries, DELIVERY_COLUMNS)
        history = BulkInsert(conn, contact_history, HISTORY_COLUMNS)
        for chunk in _chunks(recipients(outbox)):
            rows: list[tuple[Any, ...]] = []
            sent: list[tuple[Any, ...]] = []
            for r in chunk:
                cid, cell, offer = r["customer_id"], r["cell"], r["offer_code"]
                reason = rejected.get(cid) if cid is not None else None
                address = r["address"] if "address" in r else r["phone"]  # an SMS recipient has a phone
                rows.append((run_id, seq // batch_size, cid, str(address).strip().lower(), cell,
                             offer, bool(r["seed"]), accepted if reason is None else "rejected",
                             None if reason is None else reason[:200]))
                seq += 1
                if reason is None and cid is not None and not r["seed"]:
                    sent.append((cid, campaign_id, run_id, channel, cell, offer, when))
            record.write(rows)
            written += history.write(sent)
    log.info("contact history %s: %d sends, %d holdout contacts", run_id, written, held)
    return written


def record_holdout(conn: Connection, run_id: str, campaign_id: str, channel: str,
                   when: datetime) -> int:
    """The run's holdout as would-be sends in co_holdout_contacts (one INSERT ... SELECT in the
    warehouse); rows written. The frequency cap counts them like sends, so the holdout carries
    the treated's contact pressure; the warehouse's contact_history gets no control rows.

    Read from co_audience (the holdout is never posted, so no outbox holds it): a database
    writer who edits it changes whom later runs cap, never whom this run sent to.
    """
    a = audience
    rows = sa.select(
        a.c.run_id, sa.literal(campaign_id, sa.String), a.c.customer_id,
        sa.literal(channel, sa.String), sa.literal(when, sa.DateTime),
    ).where(a.c.run_id == run_id, a.c.outcome == "control", a.c.customer_id.is_not(None))
    cols = ["run_id", "campaign_id", "customer_id", "channel", "contacted_at"]
    return int(conn.execute(sa.insert(holdout_contacts).from_select(cols, rows)).rowcount or 0)


def record_contact_history(wh: Warehouse, settings: Settings, run_id: str) -> int:
    """The contact-history step: deliveries and contact history from the outbox, once; the run sent."""
    from campaignops.handoff import staged_outbox

    run = runs.get_run(wh.engine, run_id)
    outbox = staged_outbox(wh, settings, run_id)
    rec = audit.latest(wh.engine, run_id, "handoff", ("reconciled", "file_written", "file_unchanged"))
    mode = "file" if rec is not None and rec.action != "reconciled" else "http"
    batch_size = runs.get_batch_size(wh.engine, run_id) or settings.esp_batch_size
    written = write_contact_history(wh.engine, outbox, run.campaign_id, runs.send_time(run.brief),
                                    batch_size, mode, run.brief.channel)
    discard(outbox)
    trigger.advance(wh.engine, run.brief, run_id)  # a stage-triggered campaign reads the history after it
    runs.set_status(wh.engine, run_id, runs.SENT)
    audit.append(wh.engine, run_id=run_id, step="contact_history", action="written", actor=SYSTEM,
                 details={"rows": written})
    return written
