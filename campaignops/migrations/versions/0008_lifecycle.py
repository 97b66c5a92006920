"""Lifecycle scoring (issue 16).

- co_lifecycle_scores: every customer's score and stage as of the last scoring run.
- co_lifecycle_history: append-only stage changes (scoring or sales acceptance), with reasons.
- co_lifecycle_watermarks: what a stage-triggered campaign has already sent to.

Revision ID: 0008_lifecycle
Revises: 0007_watch
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_lifecycle"
down_revision = "0007_watch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three lifecycle tables."""
    op.create_table(
        "co_lifecycle_scores",
        sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("scored_at", sa.DateTime, nullable=False),
        sa.Column("stage_entered_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_co_lifecycle_scores_stage", "co_lifecycle_scores", ["stage", "stage_entered_at"])
    op.create_table(
        "co_lifecycle_history",
        sa.Column("history_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("scoring_id", sa.String(32)),
        sa.Column("customer_id", sa.BigInteger, nullable=False),
        sa.Column("from_stage", sa.String(16)),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(254)),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_co_lifecycle_history_customer", "co_lifecycle_history", ["customer_id", "at"])
    op.create_index("ix_co_lifecycle_history_at", "co_lifecycle_history", ["at"])
    op.create_index("ix_co_lifecycle_history_scoring", "co_lifecycle_history", ["scoring_id"])
    op.create_table(
        "co_lifecycle_watermarks",
        sa.Column("campaign_id", sa.String(128), primary_key=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("last_history_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    """Drop the lifecycle tables."""
    op.drop_table("co_lifecycle_watermarks")
    for name in ("ix_co_lifecycle_history_scoring", "ix_co_lifecycle_history_at",
                 "ix_co_lifecycle_history_customer"):
        op.drop_index(name, table_name="co_lifecycle_history")
    op.drop_table("co_lifecycle_history")
    op.drop_index("ix_co_lifecycle_scores_stage", table_name="co_lifecycle_scores")
    op.drop_table("co_lifecycle_scores")
