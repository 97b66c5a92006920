"""campaignops' own schema (the ``co_`` tables), versioned with Alembic.

The version lives in campaignops' own table ``co_alembic_version``, so a
warehouse that already uses Alembic for itself is not disturbed. ``upgrade`` runs
on first use in a process (one query when the schema is at head) and from
``campaignops warehouse upgrade``. Upgrades are serialised across processes: a
PostgreSQL advisory lock, a lock file beside a SQLite database.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from campaignops.errors import WarehouseError

VERSION_TABLE = "co_alembic_version"
SCRIPTS = Path(__file__).resolve().parent
_PG_LOCK_ID = 0x636F_6D67  # "comg": one advisory lock for campaignops' migrations


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this campaignops knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    """The revision the database's co_ tables are at (None: never migrated)."""
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


@contextmanager
def _lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(database).resolve()
        with open(path.with_name(path.name + ".migrate.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the co_ tables to ``revision`` (default the newest); (from, to) revisions."""
    target = head() if revision == "head" else revision
    with engine.connect() as conn:
        before = current(conn)
    if before == target:
        return before, target
    with _lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        before = current(conn)
        if before != target:
            command.upgrade(_config(conn), revision)
    return before, target


def require_current(engine: Engine) -> None:
    """Fail with one line when the co_ tables are not at the newest revision."""
    with engine.connect() as conn:
        at = current(conn)
    if at != head():
        raise WarehouseError(
            f"campaignops' tables are at revision {at or 'none'}, this version needs {head()}: "
            "run `campaignops warehouse upgrade`"
        )
