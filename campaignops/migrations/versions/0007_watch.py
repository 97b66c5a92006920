"""The watch of recurring campaigns (issue 17).

- co_run_composition: a run's send audience by dimension and its exclusions by cause.
- co_run_churn: who entered and left since the campaign's previous sent run, by cause and country.

Revision ID: 0007_watch
Revises: 0005_remediation
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_watch"
down_revision = "0005_remediation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create co_run_composition and co_run_churn."""
    op.create_table(
        "co_run_composition",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("dimension", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "co_run_churn",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("direction", sa.String(8), primary_key=True),
        sa.Column("cause", sa.String(64), primary_key=True),
        sa.Column("country", sa.String(8), primary_key=True),
        sa.Column("base_run_id", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop both tables (the watch recomputes nothing: runs before this have no watch)."""
    op.drop_table("co_run_churn")
    op.drop_table("co_run_composition")
