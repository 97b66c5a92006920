"""The holdout's would-be sends (issue 21).

- co_holdout_contacts: one row per control-group customer of a run that was handed off,
  with the channel and the time the treated were contacted. The frequency cap counts
  these rows as it counts contact_history's sends, so holdout and treated carry the same
  contact pressure over recurring runs (the warehouse's contact_history is not touched).

Revision ID: 0004_first_hour
Revises: 0003_sandbox
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_first_hour"
down_revision = "0003_sandbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "co_holdout_contacts",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("contacted_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_co_holdout_contacts_customer", "co_holdout_contacts",
                    ["customer_id", "contacted_at"])
    op.create_index("ix_co_holdout_contacts_run", "co_holdout_contacts", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_co_holdout_contacts_run", table_name="co_holdout_contacts")
    op.drop_index("ix_co_holdout_contacts_customer", table_name="co_holdout_contacts")
    op.drop_table("co_holdout_contacts")
