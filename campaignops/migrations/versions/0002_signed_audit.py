"""Signed audit and per-recipient deliveries (issue 11).

- co_audit: ``n`` (numbered without gaps, unique), ``mac`` and ``key_id``; existing records
  are numbered in their order and stay unsigned (verified by hash and link only).
- co_ledger: ``rejections`` (the ESP's rejected customer ids and reasons, per batch).
- co_deliveries: who got what, written from the batches as acknowledged.
- co_runs: ``waiting_host``, ``waiting_pid`` (which process an ad hoc run waits in).

Revision ID: 0002_signed_audit
Revises: 0001_baseline
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_signed_audit"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def _backfill_numbers() -> None:
    """Number the existing audit records in their order (the append-only guard paused)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS co_audit_no_update")
        op.execute("UPDATE co_audit SET n = (SELECT COUNT(*) FROM co_audit a WHERE a.seq <= co_audit.seq)")
        op.execute("CREATE TRIGGER IF NOT EXISTS co_audit_no_update BEFORE UPDATE ON co_audit "
                   "BEGIN SELECT RAISE(ABORT, 'co_audit is append-only'); END")
    elif bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE co_audit DISABLE TRIGGER co_audit_append_only")
        op.execute("UPDATE co_audit SET n = o.n FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS n "
                   "FROM co_audit) o WHERE co_audit.seq = o.seq")
        op.execute("ALTER TABLE co_audit ENABLE TRIGGER co_audit_append_only")
    else:  # pragma: no cover - campaignops' guards exist for SQLite and PostgreSQL only
        op.execute("UPDATE co_audit SET n = (SELECT COUNT(*) FROM co_audit a WHERE a.seq <= co_audit.seq)")


def upgrade() -> None:
    """Add the columns and the table; number existing audit records."""
    # plain ADD COLUMN (SQLite has it): a batch copy would drop the append-only triggers
    op.add_column("co_audit", sa.Column("n", sa.BigInteger))
    op.add_column("co_audit", sa.Column("mac", sa.String(64)))
    op.add_column("co_audit", sa.Column("key_id", sa.String(16)))
    _backfill_numbers()
    op.create_index("uq_co_audit_n", "co_audit", ["n"], unique=True)
    op.add_column("co_ledger", sa.Column("rejections", sa.Text))
    op.add_column("co_runs", sa.Column("waiting_host", sa.String(255)))
    op.add_column("co_runs", sa.Column("waiting_pid", sa.Integer))
    op.create_table(
        "co_deliveries",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("batch_seq", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.BigInteger),
        sa.Column("address_key", sa.String(254), nullable=False),
        sa.Column("cell", sa.String(64)),
        sa.Column("offer_code", sa.String(64)),
        sa.Column("is_seed", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200)),
    )
    op.create_index("ix_co_deliveries_run", "co_deliveries", ["run_id"])


def downgrade() -> None:
    """The signed audit is not removed."""
    raise NotImplementedError("campaignops keeps its audit: the signed audit is not dropped")
