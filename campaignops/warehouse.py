"""The warehouse resource: one engine per run, its dialect's specifics, campaignops' schema at head.

``open_warehouse(url)`` is the only place an engine is made. It checks that the
database answers and holds the data model's five input tables, registers the
SQLite functions campaignops' SQL uses (``campaignops.sql``), and brings
campaignops' own tables to the newest Alembic revision (one query when they are
already there). Every step receives the :class:`Warehouse` it opened; nothing
else builds engines from the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import migrations
from campaignops.errors import WarehouseError
from campaignops.schema import warehouse_metadata
from campaignops.sql import sqlite_bucket, sqlite_half_life, sqlite_valid_address


@dataclass(frozen=True)
class Warehouse:
    """The warehouse database as campaignops uses it (created once, passed to every step)."""

    engine: Engine

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect name: sqlite or postgresql (others work as generic SQL)."""
        return str(self.engine.dialect.name)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden (for messages)."""
        return self.engine.url.render_as_string(hide_password=True)

    def has_index_led_by(self, table: str, column: str) -> bool:
        """Whether the user's table has an index whose first column is ``column``."""
        indexes = sa.inspect(self.engine).get_indexes(table)
        return any(i["column_names"][:1] == [column] for i in indexes)

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.create_function("co_bucket", 2, sqlite_bucket, deterministic=True)
    dbapi_conn.create_function("co_valid_address", 1, sqlite_valid_address, deterministic=True)
    dbapi_conn.create_function("co_half_life", 2, sqlite_half_life, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for the warehouse URL with campaignops' SQL functions, checked to be reachable."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except Exception as exc:
        raise WarehouseError(
            f"CAMPAIGNOPS_WAREHOUSE_URL is not a valid SQLAlchemy URL ({type(exc).__name__}): "
            "use e.g. sqlite:///path/warehouse.db or postgresql+psycopg://host/db"
        ) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _on_sqlite_connect)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        raise WarehouseError(
            f"warehouse at {engine.url.render_as_string(hide_password=True)} is unreachable "
            f"({type(exc).__name__}): check CAMPAIGNOPS_WAREHOUSE_URL or run "
            "`campaignops warehouse init`"
        ) from None
    return engine


def require_inputs(engine: Engine) -> None:
    """Fail with one line when a table of the data model is missing."""
    present = set(sa.inspect(engine).get_table_names())
    missing = [t for t in warehouse_metadata.tables if t not in present]
    if missing:
        raise WarehouseError(
            f"warehouse is missing tables {', '.join(sorted(missing))}: "
            "run `campaignops warehouse init` or point CAMPAIGNOPS_WAREHOUSE_URL at a warehouse"
        )


def open_warehouse(url: str, *, upgrade: bool = True) -> Warehouse:
    """The warehouse at ``url``, its input tables checked and (by default) campaignops' schema upgraded."""
    engine = make_engine(url)
    try:
        require_inputs(engine)
        if upgrade:
            migrations.upgrade(engine)
        else:
            migrations.require_current(engine)
    except BaseException:
        engine.dispose()
        raise
    return Warehouse(engine)

