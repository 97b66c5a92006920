"""SMS campaigns (issue 18).

- co_sms_phones: an SMS run's phone numbers normalised to E.164 (customers and sms
  suppressions), which the segmentation's SQL joins.

Revision ID: 0009_sms
Revises: 0008_lifecycle
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_sms"
down_revision = "0008_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create co_sms_phones."""
    op.create_table(
        "co_sms_phones",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.BigInteger),
        sa.Column("e164", sa.String(16)),
        sa.Column("reason", sa.String(32)),
    )
    op.create_index("ix_co_sms_phones_run", "co_sms_phones", ["run_id", "customer_id"])


def downgrade() -> None:
    """Drop co_sms_phones."""
    op.drop_index("ix_co_sms_phones_run", table_name="co_sms_phones")
    op.drop_table("co_sms_phones")
