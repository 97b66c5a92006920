"""Hermetic test fixtures: isolated homes, environment and databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# Offline: no telemetry from the Prefect test server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

PG_ADMIN_URL = os.environ.get(
    "CAMPAIGNOPS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own CAMPAIGNOPS_HOME and no inherited campaignops settings."""
    for key in list(os.environ):
        if key.startswith("CAMPAIGNOPS_") and key != "CAMPAIGNOPS_TEST_PG_URL":
            monkeypatch.delenv(key, raising=False)
        if key.startswith("GX_CLOUD_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CAMPAIGNOPS_HOME", str(tmp_path / "home"))
    yield


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite warehouse file."""
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


def _pg_available() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    reason = _pg_available()
    if reason is not None:
        pytest.skip(f"NO POSTGRESQL at {PG_ADMIN_URL}: {reason}")
    name = f"co_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
