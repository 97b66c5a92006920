"""The watch reads the lifecycle stage from the run's own rows (issue 17).

- co_audience.lifecycle_stage: the customer's stage at segmentation, written by the same
  INSERT ... SELECT as country and loyalty_tier, so the watch's composition is one scan
  of the run's rows with no lookup into customers (docs/watch.md, docs/bench-watch.md).

Revision ID: 0010_audience_stage
Revises: 0009_sms
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_audience_stage"
down_revision = "0009_sms"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add co_audience.lifecycle_stage (nullable: rows of earlier runs have none)."""
    op.add_column("co_audience", sa.Column("lifecycle_stage", sa.String(16)))


def downgrade() -> None:
    """Drop co_audience.lifecycle_stage."""
    with op.batch_alter_table("co_audience") as batch:
        batch.drop_column("lifecycle_stage")
