"""Hermetic test fixtures: isolated homes, environment and databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

TOKEN = "test-token-not-a-secret"
AUDIT_KEY = "test-audit-key-not-a-secret-0123456789abcdef"

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
    # no test leaves a background Prefect server behind (tests/test_server_reuse.py starts one)
    monkeypatch.setenv("CAMPAIGNOPS_PREFECT_SERVER", "temporary")
    monkeypatch.setenv("CAMPAIGNOPS_AUDIT_KEY", AUDIT_KEY)  # signs every audit record a test writes
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


@contextlib.contextmanager
def scratch_database(prefix: str = "co_t") -> Iterator[sa.engine.URL]:
    """A fresh PostgreSQL database on the local server, dropped afterwards (skips loudly without one)."""
    reason = _pg_available()
    if reason is not None:
        pytest.skip(f"NO POSTGRESQL at {PG_ADMIN_URL}: {reason}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    with scratch_database() as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# --- Prefect and the ESP sandbox, shared by the flow tier -------------------------

@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test harness for the session (it takes ~10 s to start)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=60):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def warehouse_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-customer synthetic warehouse, built once and copied per test."""
    path = tmp_path_factory.mktemp("wh") / "warehouse.db"
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    engine = make_engine(f"sqlite:///{path}")
    init_warehouse(engine, customers=20_000, seed=7)
    engine.dispose()
    return path


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """The ESP sandbox on a free loopback port."""
    from campaignops.esp.sandbox import EspSandbox

    sb = EspSandbox(token=TOKEN).start()
    yield sb
    sb.stop()




@pytest.fixture
def handoff_env(warehouse_template: Path, sandbox: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh warehouse copy, the sandbox's URL (no ESP token anywhere) and the winback
    approvers with their keys, for driving the handoff step directly."""
    from campaignops.approvers import add_approver
    from tests.flowkit import WINBACK_APPROVERS, warehouse

    wh = tmp_path / "warehouse.db"
    shutil.copy(warehouse_template, wh)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", f"sqlite:///{wh}")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    engine = warehouse().engine
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    return {"engine": engine, "keys": keys, "sandbox": sandbox}


# --- test tiers --------------------------------------------------------------------
TIERS = ("unit", "flow", "integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test carries a tier (unit, flow, integration), so the tiers together select all.

    A test that uses the local PostgreSQL (the pg_url fixture, or db_url's postgresql case)
    is also in the integration tier; a test with no tier at all fails collection.
    """
    unmarked = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "pg_url" in fixtures or "pg_prefect_server" in fixtures:
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(t) for t in TIERS):
            unmarked.append(item.nodeid)
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) carry no tier marker ({', '.join(TIERS)}): "
            + ", ".join(unmarked[:5]) + ("..." if len(unmarked) > 5 else "")
            + "; add `pytestmark = pytest.mark.unit` (or flow / integration) to the file"
        )
