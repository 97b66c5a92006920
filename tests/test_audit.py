"""The audit trail: append-only, chained, tamper-evident, safe under concurrent writers."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from campaignops import audit, migrations
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit


def _engine(url: str) -> sa.Engine:
    engine = make_engine(url)
    migrations.upgrade(engine)
    return engine


def test_chain_verifies_and_updates_and_deletes_are_refused(db_url: str) -> None:
    engine = _engine(db_url)
    for i in range(5):
        audit.append(engine, run_id="r1", step="s", action="a", actor="system", details={"n": i})
    v = audit.verify(engine)
    assert v.ok and v.records == 5
    for stmt in ("UPDATE co_audit SET actor = 'mallory'", "DELETE FROM co_audit"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(stmt)
    assert [r.details["n"] for r in audit.trail(engine, "r1")] == [0, 1, 2, 3, 4]


def test_tampering_is_detected_at_the_first_bad_record(sqlite_url: str) -> None:
    engine = _engine(sqlite_url)
    for i in range(4):
        audit.append(engine, run_id="r1", step="s", action="a", actor="system", details={"n": i})
    with engine.begin() as conn:  # someone with DDL rights drops the guard and edits history
        conn.exec_driver_sql("DROP TRIGGER co_audit_no_update")
        conn.exec_driver_sql("UPDATE co_audit SET details = '{\"n\":99}' WHERE seq = 3")
    v = audit.verify(engine)
    assert not v.ok and v.first_bad_seq == 3 and "does not match" in (v.problem or "")


def test_concurrent_writers_never_fork_the_chain(db_url: str) -> None:
    engine = _engine(db_url)

    def write(tag: str) -> None:
        for i in range(25):
            audit.append(engine, run_id=tag, step="s", action="a", actor="system", details={"i": i})

    threads = [threading.Thread(target=write, args=(f"w{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = audit.verify(engine)
    assert v.ok and v.records == 100
