"""Baseline: campaignops' tables as they were before Alembic, created or completed in place.

Warehouses from earlier versions already hold some of these tables, made by the
hand-written additive migration this revision replaces: each table is created
when missing, or given the nullable columns and indexes it lacks; the two
co_audience indexes earlier versions made are dropped; the audit table's
append-only triggers are (re)installed.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# Indexes earlier versions created on co_audience: they took rows in random order and
# cost PostgreSQL ~12 s of a 28 s segmentation INSERT at 10M customers.
RETIRED_INDEXES = {"co_audience": ("ix_co_audience_run_outcome_customer", "ix_co_audience_run_address")}

AUDIT_GUARDS = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS co_audit_no_update BEFORE UPDATE ON co_audit "
        "BEGIN SELECT RAISE(ABORT, 'co_audit is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS co_audit_no_delete BEFORE DELETE ON co_audit "
        "BEGIN SELECT RAISE(ABORT, 'co_audit is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION co_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'co_audit is append-only'; END $$",
        "DROP TRIGGER IF EXISTS co_audit_append_only ON co_audit",
        "CREATE TRIGGER co_audit_append_only BEFORE UPDATE OR DELETE ON co_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION co_audit_append_only()",
    ],
}


def _tables() -> sa.MetaData:
    """The co_ tables at this revision (a frozen copy: later revisions change them)."""
    md = sa.MetaData()
    sa.Table(
        "co_runs",
        md,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("brief_digest", sa.String(64), nullable=False),
        sa.Column("brief_json", sa.Text, nullable=False),  # the brief as accepted at intake
        sa.Column("brief_source", sa.String(512)),
        sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("audience_digest", sa.String(64)),
        sa.Column("recipients", sa.Integer),
        sa.Column("waiting_stage", sa.String(64)),
        sa.Column("waiting_since", sa.DateTime),
        sa.Column("contact_history_written", sa.Boolean, nullable=False, default=False),
        # Fixed at the first handoff attempt so every rerun cuts the same batches.
        sa.Column("batch_size", sa.Integer),
    )

    sa.Table(
        "co_audience",
        md,
        sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.BigInteger),  # null for seed recipients
        sa.Column("email", sa.String(254)),
        sa.Column("address_key", sa.String(254)),  # lower(trim(email))
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("language", sa.String(8)),
        sa.Column("country", sa.String(2)),
        sa.Column("loyalty_tier", sa.String(16)),
        # outcome: send | control | excluded | seed
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64)),  # why excluded, null otherwise
        sa.Column("cell", sa.String(64)),
        sa.Column("offer_code", sa.String(64)),
        sa.Column("is_seed", sa.Boolean, nullable=False, default=False),
        # One index, on the run: a segmentation's rows arrive in address order, and an index
        # keyed on anything else takes them in random order. Every reader selects one run's
        # rows (and most of them) anyway. At 10M customers (1.1M rows a run) the two indexes
        # this replaces, (run_id, outcome, customer_id) and (run_id, address_key), cost
        # PostgreSQL ~12 s of a 28 s INSERT; this one ~1 s (docs/segmentation.md).
        sa.Index("ix_co_audience_run", "run_id"),
    )

    sa.Table(
        "co_audit",
        md,
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("run_id", sa.String(64)),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(254), nullable=False),
        sa.Column("details", sa.Text, nullable=False),  # canonical JSON
        sa.Column("created_at", sa.String(32), nullable=False),  # ISO-8601 UTC
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Index("ix_co_audit_run", "run_id"),
        # One successor per record: two writers racing on the same tail cannot fork the chain.
        sa.UniqueConstraint("prev_hash", name="uq_co_audit_prev_hash"),
    )

    sa.Table(
        "co_ledger",
        md,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("batch_seq", sa.Integer, primary_key=True),
        sa.Column("idempotency_key", sa.String(160), nullable=False),
        sa.Column("batch_digest", sa.String(64), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("esp_batch_id", sa.String(128)),
        sa.Column("acked_at", sa.DateTime, nullable=False),
    )

    sa.Table(
        "co_approvers",
        md,
        sa.Column("name", sa.String(254), primary_key=True),
        sa.Column("key_salt", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, default="person"),  # person | demo
        sa.Column("created_at", sa.DateTime, nullable=False),
    )

    sa.Table(
        "co_approvals",
        md,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(64), primary_key=True),
        sa.Column("approver", sa.String(254), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("packet_digest", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.DateTime, nullable=False),
    )

    sa.Table(
        "co_standing_approvals",
        md,
        sa.Column("grant_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("granted_by", sa.String(254), nullable=False),
        sa.Column("granted_in_run", sa.String(64), nullable=False),
        sa.Column("granted_at", sa.DateTime, nullable=False),
        sa.Column("revoked_by", sa.String(254)),
        sa.Column("revoked_at", sa.DateTime),
        sa.Index("ix_co_standing_campaign_stage", "campaign_id", "stage"),
    )
    return md


def upgrade() -> None:
    """Create what is missing, complete what earlier versions made."""
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present = set(inspector.get_table_names())
    for table in _tables().sorted_tables:
        if table.name not in present:
            table.create(bind)
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name not in columns:
                if not col.nullable:
                    raise RuntimeError(
                        f"table {table.name} predates column {col.name}: rename the old table "
                        "or point CAMPAIGNOPS_WAREHOUSE_URL at a fresh database"
                    )
                op.add_column(table.name, sa.Column(col.name, col.type, nullable=True))
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)
        for name in sorted(set(RETIRED_INDEXES.get(table.name, ())) & indexes):
            op.drop_index(name, table_name=table.name)
    for stmt in AUDIT_GUARDS.get(bind.dialect.name, []):
        op.execute(stmt)


def downgrade() -> None:
    """campaignops keeps its audit: the baseline is never dropped."""
    raise NotImplementedError("the baseline holds the audit trail and is not dropped")
