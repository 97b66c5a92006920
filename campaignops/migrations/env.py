"""Alembic environment: campaignops' own tables only, on the connection the caller passes."""

from __future__ import annotations

from typing import Any

from alembic import context

from campaignops.migrations import VERSION_TABLE
from campaignops.schema import project_metadata


def _ours(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only campaignops' co_ tables are ever compared or touched."""
    return type_ != "table" or bool(name and name.startswith("co_"))


connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - campaignops always passes its connection
    raise RuntimeError("campaignops migrations run through campaignops.migrations.upgrade")
context.configure(
    connection=connection,
    target_metadata=project_metadata,
    version_table=VERSION_TABLE,
    include_name=_ours,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
