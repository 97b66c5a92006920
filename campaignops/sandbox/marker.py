"""The sandbox marker: the one co_sandbox row that says a warehouse is a masked copy."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.schema import sandbox_marker


@dataclass(frozen=True)
class SandboxMarker:
    """Where a sandbox came from and how it was masked (never the key)."""

    source: str
    created_at: dt.datetime
    masking_version: str
    key_id: str
    min_domain_count: int
    kept_columns: list[str]
    row_counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {"source": self.source, "created_at": self.created_at.isoformat(),
                "masking_version": self.masking_version, "key_id": self.key_id,
                "min_domain_count": self.min_domain_count, "kept_columns": self.kept_columns,
                "row_counts": self.row_counts}


def read_marker(engine: Engine) -> SandboxMarker | None:
    """The warehouse's sandbox marker, or None for a warehouse that is not a sandbox."""
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(sandbox_marker).order_by(sandbox_marker.c.sandbox_id)
                               .limit(1)).first()
    except sa.exc.DBAPIError:  # co_tables before revision 0003: no marker table, not a sandbox
        return None
    if row is None:
        return None
    return SandboxMarker(source=row.source, created_at=row.created_at,
                         masking_version=row.masking_version, key_id=row.key_id,
                         min_domain_count=int(row.min_domain_count),
                         kept_columns=list(json.loads(row.kept_columns)),
                         row_counts={k: int(v) for k, v in json.loads(row.row_counts).items()})


def is_sandbox(engine: Engine) -> bool:
    """Whether the warehouse is a sandbox (co_sandbox holds its marker)."""
    return read_marker(engine) is not None


def write_marker(engine: Engine, marker: SandboxMarker) -> None:
    """Replace the marker with this one (one row)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(sandbox_marker))
        conn.execute(sa.insert(sandbox_marker).values(
            sandbox_id=1, source=marker.source[:512], created_at=marker.created_at,
            masking_version=marker.masking_version, key_id=marker.key_id,
            min_domain_count=marker.min_domain_count,
            kept_columns=json.dumps(marker.kept_columns),
            row_counts=json.dumps(marker.row_counts, sort_keys=True)))
