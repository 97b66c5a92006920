"""Incidents and the runs that correct them (issue 14).

- co_incidents: a send that went wrong, reported against its run (kind, cell, offer,
  reporter, note, open or closed).
- co_corrections: incident -> correction run (one incident per run), so a correction never
  reaches the same person twice for one incident.

Revision ID: 0005_remediation
Revises: 0004_first_hour
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_remediation"
down_revision = "0004_first_hour"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create co_incidents and co_corrections."""
    op.create_table(
        "co_incidents",
        sa.Column("incident_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("cell", sa.String(64)),
        sa.Column("offer_code", sa.String(64)),
        sa.Column("reported_by", sa.String(254), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("closed_at", sa.DateTime),
        sa.Column("closed_by", sa.String(254)),
        sa.Column("close_note", sa.Text),
    )
    op.create_index("ix_co_incidents_run", "co_incidents", ["run_id"])
    op.create_table(
        "co_corrections",
        sa.Column("incident_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_co_corrections_run", "co_corrections", ["run_id"], unique=True)


def downgrade() -> None:
    """Drop both tables (incidents are also in the audit trail)."""
    op.drop_index("ix_co_corrections_run", table_name="co_corrections")
    op.drop_table("co_corrections")
    op.drop_index("ix_co_incidents_run", table_name="co_incidents")
    op.drop_table("co_incidents")
