"""campaignops' own schema under Alembic: created, upgraded in place, never touching the data model."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from campaignops import migrations
from campaignops.cli import main
from campaignops.errors import WarehouseError
from campaignops.schema import project_metadata, warehouse_metadata
from campaignops.warehouse import make_engine, open_warehouse
from tests.factories import build_warehouse, customer

pytestmark = pytest.mark.unit
BASELINE = importlib.import_module("campaignops.migrations.versions.0001_baseline")


def _bare(url: str) -> sa.Engine:
    """A warehouse with the data model's tables only (as a user's comes)."""
    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    return engine


def test_head_matches_the_schema_module(db_url: str) -> None:
    engine = _bare(db_url)
    migrations.upgrade(engine)
    with engine.connect() as conn:
        ours = {t.name for t in project_metadata.sorted_tables}
        ctx = MigrationContext.configure(conn, opts={"include_name": lambda n, t, p: t != "table" or n in ours})
        diffs = compare_metadata(ctx, project_metadata)
    assert diffs == []
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()


def test_upgrade_at_head_only_reads_and_leaves_the_data_model_alone(db_url: str) -> None:
    engine = build_warehouse(db_url, [customer(1)])
    before = {t: sorted(c["name"] for c in sa.inspect(engine).get_columns(t)) for t in warehouse_metadata.tables}
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda *a: statements.append(a[2]))
    assert migrations.upgrade(engine) == (migrations.head(), migrations.head())
    assert len(statements) <= 2 and all(s.lstrip().upper().startswith(("SELECT", "PRAGMA")) for s in statements)
    assert "co_alembic_version" in statements[-1]
    after = {t: sorted(c["name"] for c in sa.inspect(engine).get_columns(t)) for t in warehouse_metadata.tables}
    assert before == after


def test_a_pre_alembic_warehouse_is_completed_in_place(db_url: str) -> None:
    """A warehouse made by an earlier version (no version table, old co_audience indexes,
    a column missing) is upgraded without losing its runs."""
    engine = _bare(db_url)
    migrations.upgrade(engine, "0001_baseline")  # the tables as earlier versions left them
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE co_alembic_version")
        conn.exec_driver_sql("DROP INDEX ix_co_audience_run")
        conn.exec_driver_sql("CREATE INDEX ix_co_audience_run_outcome_customer "
                             "ON co_audience (run_id, outcome, customer_id)")
        conn.exec_driver_sql("CREATE INDEX ix_co_audience_run_address ON co_audience (run_id, address_key)")
        conn.exec_driver_sql("ALTER TABLE co_runs DROP COLUMN batch_size")
        conn.exec_driver_sql(
            "INSERT INTO co_approvers (name, key_salt, key_hash, kind, created_at) "
            "VALUES ('kept@example.com', 'aa', 'bb', 'person', '2026-01-01 00:00:00')")
    before, after = migrations.upgrade(engine)
    assert (before, after) == (None, migrations.head())
    names = {i["name"] for i in sa.inspect(engine).get_indexes("co_audience")}
    assert "ix_co_audience_run" in names
    assert not names & set(BASELINE.RETIRED_INDEXES["co_audience"])
    assert "batch_size" in {c["name"] for c in sa.inspect(engine).get_columns("co_runs")}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM co_approvers").scalars().all() == ["kept@example.com"]


def test_the_audit_guard_is_installed(db_url: str) -> None:
    engine = build_warehouse(db_url, [customer(1)])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO co_audit (run_id, step, action, actor, details, created_at, prev_hash, hash) "
            "VALUES ('r', 's', 'a', 'x', '{}', 't', 'p', 'h')")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM co_audit")


def test_concurrent_first_uses_upgrade_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _bare(url).dispose()
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            open_warehouse(url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM co_alembic_version").scalar_one() == 1


def test_require_current_names_the_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _bare(url).dispose()
    with pytest.raises(WarehouseError, match="campaignops warehouse upgrade"):
        open_warehouse(url, upgrade=False)


def test_warehouse_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _bare(url).dispose()
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", url)
    first = CliRunner().invoke(main, ["warehouse", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"upgraded from revision none to {migrations.head()}" in first.output
    again = CliRunner().invoke(main, ["warehouse", "upgrade"])
    assert again.exit_code == 0 and "up to date" in again.output
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    missing = CliRunner().invoke(main, ["--warehouse-url", empty, "warehouse", "upgrade"])
    assert missing.exit_code == 3 and "warehouse is missing tables" in missing.output


def test_existing_audit_records_are_numbered_and_stay_verifiable(db_url: str) -> None:
    from campaignops import audit

    engine = _bare(db_url)
    migrations.upgrade(engine, "0001_baseline")
    prev = audit.GENESIS
    with engine.begin() as conn:  # a trail written by a version before signing
        for i in (1, 2, 3):
            at = f"2026-01-0{i}T00:00:00"
            h = audit.legacy_hash(prev, "old", "s", "a", "x", "{}", at)
            conn.execute(sa.text(
                "INSERT INTO co_audit (run_id, step, action, actor, details, created_at, prev_hash, hash) "
                "VALUES ('old', 's', 'a', 'x', '{}', :t, :p, :h)"), {"t": at, "p": prev, "h": h})
            prev = h
    migrations.upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM co_audit ORDER BY seq").scalars().all() == [1, 2, 3]
    audit.append(engine, run_id="new", step="s", action="a", actor="x")
    v = audit.verify(engine)
    assert v.ok and v.records == 4 and v.unsigned == 3 and v.head is not None and v.head[0] == 4
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.exec_driver_sql("UPDATE co_audit SET actor = 'mallory'")  # the guard is back
