"""The sandbox marker (issue 15): co_sandbox says a warehouse is a masked copy.

Revision ID: 0003_sandbox
Revises: 0002_signed_audit
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sandbox"
down_revision = "0002_signed_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create co_sandbox (empty: a warehouse is a sandbox only once `sandbox create` marks it)."""
    op.create_table(
        "co_sandbox",
        sa.Column("sandbox_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("masking_version", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("min_domain_count", sa.Integer, nullable=False),
        sa.Column("kept_columns", sa.Text, nullable=False),
        sa.Column("row_counts", sa.Text, nullable=False),
    )


def downgrade() -> None:
    """Drop co_sandbox."""
    op.drop_table("co_sandbox")
