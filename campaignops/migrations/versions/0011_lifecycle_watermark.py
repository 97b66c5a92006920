"""Lifecycle watermarks (issue 16): incremental scoring and stage-triggered campaigns.

- co_lifecycle_scores gains `fit` and `engagement` (the raw, uncapped engagement as of
  `scored_at`): a rescoring carries an unchanged customer's engagement forward by decay alone.
- co_lifecycle_watermarks gains `as_of` (the inputs a scoring has read through) and a claim
  (`claimed_by`, `claimed_at`): two scorings, or two runs of one triggered campaign, never
  overlap.

Revision ID: 0011_lifecycle_watermark
Revises: 0010_audience_stage
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_lifecycle_watermark"
down_revision = "0010_audience_stage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the score parts and the watermark's claim."""
    with op.batch_alter_table("co_lifecycle_scores") as t:
        t.add_column(sa.Column("fit", sa.Float))
        t.add_column(sa.Column("engagement", sa.Float))
    with op.batch_alter_table("co_lifecycle_watermarks") as t:
        t.add_column(sa.Column("as_of", sa.DateTime))
        t.add_column(sa.Column("claimed_by", sa.String(64)))
        t.add_column(sa.Column("claimed_at", sa.DateTime))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("co_lifecycle_watermarks") as t:
        t.drop_column("claimed_at")
        t.drop_column("claimed_by")
        t.drop_column("as_of")
    with op.batch_alter_table("co_lifecycle_scores") as t:
        t.drop_column("engagement")
        t.drop_column("fit")
