"""Contact history: each treated recipient of a sent run written once (it feeds the next cap)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.errors import HandoffError
from campaignops.runs import utc_naive
from campaignops.schema import audience, contact_history
from campaignops.schema import runs as runs_table
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"

# -- contact history ----------------------------------------------------------
def write_contact_history(
    engine: Engine, run_id: str, campaign_id: str, sent_at: datetime, channel: str = "email"
) -> int:
    """Insert the run's sends (not seeds, not control) into contact_history once.

    ``co_runs.contact_history_written`` is flipped in the same transaction as
    the INSERT ... SELECT; a second call finds it set and returns 0.
    """
    when = utc_naive(sent_at)
    with engine.begin() as conn:
        claimed = conn.execute(
            sa.update(runs_table)
            .where(
                runs_table.c.run_id == run_id,
                sa.or_(runs_table.c.contact_history_written == sa.false(),
                       runs_table.c.contact_history_written.is_(None)),
            )
            .values(contact_history_written=True)
        ).rowcount
        if claimed != 1:
            exists = conn.execute(
                sa.select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)
            ).first()
            if exists is None:
                raise HandoffError(f"run {run_id} is not in co_runs: cannot write contact history")
            return 0
        a = audience.c
        select = sa.select(
            a.customer_id,
            sa.literal(campaign_id, sa.String(128)),
            a.run_id,
            sa.literal(channel, sa.String(8)),
            a.cell,
            a.offer_code,
            sa.literal(when, sa.DateTime()),
        ).where(
            a.run_id == run_id,
            a.outcome == "send",
            a.is_seed == sa.false(),
            a.customer_id.is_not(None),
        )
        inserted = conn.execute(
            contact_history.insert().from_select(
                ["customer_id", "campaign_id", "run_id", "channel", "cell", "offer_code",
                 "sent_at"],
                select,
            ),
            execution_options={"preserve_rowcount": True},  # INSERT rowcount on psycopg too
        ).rowcount
    return int(inserted)


def record_contact_history(wh: Warehouse, run_id: str) -> int:
    """The contact-history step: write the run's sends once, mark it sent; the rows written."""
    run = runs.get_run(wh.engine, run_id)
    written = write_contact_history(wh.engine, run_id, run.campaign_id, runs.send_time(run.brief))
    runs.set_status(wh.engine, run_id, runs.SENT)
    audit.append(wh.engine, run_id=run_id, step="contact_history", action="written", actor=SYSTEM,
                 details={"rows": written})
    return written
