"""The audit trail: append-only, chained, tamper-evident, safe under concurrent writers."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignops import audit, migrations
from campaignops.schema import audit_log
from campaignops.warehouse import make_engine
from tests.factories import drop_guards

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
    assert not v.ok and v.first_bad_n == 3 and "does not match" in (v.problem or "")


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


# --- what a writer with access to the database can do, and what verify says -----------------

KEY = b"the-real-audit-key-0123456789abcdef-0123"
OTHER = b"an-attackers-guess-0123456789abcdef-0123"


def _build(url: str, n: int, anchor_file: Path) -> sa.Engine:
    engine = _engine(url)
    for i in range(n):
        audit.append(engine, run_id=f"r{i % 3}", step="s", action="a", actor="system",
                     details={"i": i}, key=KEY)
    audit.anchor(engine, anchor_file, KEY)
    drop_guards(engine)
    return engine


def _rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]


def _rewrite(engine: sa.Engine, rows: list[dict[str, Any]], key: bytes) -> None:
    """Replace the whole table with ``rows``, renumbered and re-chained as a forger would: a
    record whose hash comes out unchanged keeps its genuine MAC, the others get the forger's."""
    prev = audit.GENESIS
    with engine.begin() as conn:
        conn.execute(sa.delete(audit_log))
        for i, r in enumerate(rows, start=1):
            h = audit.record_hash(prev, i, r["run_id"], r["step"], r["action"], r["actor"],
                                  r["details"], r["created_at"])
            conn.execute(sa.insert(audit_log).values(
                seq=i, run_id=r["run_id"], step=r["step"], action=r["action"], actor=r["actor"],
                details=r["details"], created_at=r["created_at"], prev_hash=prev, hash=h, n=i,
                mac=r["mac"] if h == r.get("hash") else audit.sign(key, h),
                key_id=r.get("key_id") if h == r.get("hash") else "forged"))
            prev = h


def _forged(i: int) -> dict[str, Any]:
    return {"run_id": "r1", "step": "approval:business", "action": "approved",
            "actor": "blake.director@example.com", "details": '{"packet_digest":"x"}',
            "created_at": f"2026-12-0{1 + i % 8}T00:00:00.000000+00:00"}


def _tamper(engine: sa.Engine, kind: str, at: int, count: int) -> None:
    rows = _rows(engine)
    at = at % len(rows)
    if kind == "edit":
        with engine.begin() as conn:
            conn.execute(sa.update(audit_log).where(audit_log.c.seq == rows[at]["seq"])
                         .values(actor="mallory"))
    elif kind == "delete":
        doomed = [r["seq"] for r in rows[at:at + count]]
        with engine.begin() as conn:
            conn.execute(sa.delete(audit_log).where(audit_log.c.seq.in_(doomed)))
    elif kind == "delete_tail":
        doomed = [r["seq"] for r in rows[-count:]]
        with engine.begin() as conn:
            conn.execute(sa.delete(audit_log).where(audit_log.c.seq.in_(doomed)))
    elif kind == "delete_and_rechain":
        _rewrite(engine, rows[:at] + rows[at + count:], OTHER)
    elif kind == "rewrite_from":
        changed = [dict(r, actor="mallory") if i >= at else r for i, r in enumerate(rows)]
        _rewrite(engine, changed, OTHER)
    elif kind == "append":
        _rewrite(engine, rows + [_forged(i) for i in range(count)], OTHER)
    elif kind == "insert":
        _rewrite(engine, rows[:at] + [_forged(0)] + rows[at:], OTHER)
    else:  # pragma: no cover
        raise AssertionError(kind)


KINDS = ("edit", "delete", "delete_tail", "delete_and_rechain", "rewrite_from", "append", "insert")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 25), kind=st.sampled_from(KINDS), at=st.integers(0, 1000),
       count=st.integers(1, 6))
def test_verify_detects_every_tampering(tmp_path: Path, n: int, kind: str, at: int, count: int) -> None:
    """Random chains, random tamperings: verify names every one of them (SQLite)."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    engine = _build(f"sqlite:///{folder / 'w.db'}", n, folder / "anchors.jsonl")
    assert audit.verify(engine, folder / "anchors.jsonl", KEY).ok
    if kind in ("delete", "delete_tail", "delete_and_rechain"):
        count = min(count, n - 1)
    _tamper(engine, kind, at, count)
    v = audit.verify(engine, folder / "anchors.jsonl", KEY)
    engine.dispose()
    assert not v.ok, (kind, at, count, n)


@pytest.mark.parametrize(("kind", "expected"), [
    ("edit", "content does not match its hash"),
    ("delete", "numbering jumps"),
    ("delete_tail", "the tail is missing"),
    ("delete_and_rechain", "do not carry this audit key's MAC"),
    ("rewrite_from", "rewritten or inserted without the key"),
    ("append", "appended without the key (a forgery)"),
    ("insert", "rewritten or inserted without the key"),
])
def test_verify_names_what_was_done(db_url: str, tmp_path: Path, kind: str, expected: str) -> None:
    engine = _build(db_url, 12, tmp_path / "anchors.jsonl")
    _tamper(engine, kind, 5, 3)
    v = audit.verify(engine, tmp_path / "anchors.jsonl", KEY)
    assert not v.ok
    assert any(expected in p for p in v.problems), v.problems


def test_a_record_signed_with_another_key_does_not_verify(sqlite_url: str, tmp_path: Path) -> None:
    engine = _engine(sqlite_url)
    audit.append(engine, run_id="r", step="s", action="a", actor="x", key=KEY)
    audit.append(engine, run_id="r", step="s", action="a", actor="x", key=OTHER)
    v = audit.verify(engine, None, KEY)
    assert not v.ok and "appended without the key" in (v.problem or "")
    assert audit.verify(engine, None, OTHER).problems != []  # and the first fails the other key


def test_records_from_before_signing_verify_by_hash_and_stay_a_prefix(sqlite_url: str) -> None:
    engine = _engine(sqlite_url)
    drop_guards(engine)
    prev = audit.GENESIS
    with engine.begin() as conn:  # two records as an older campaignops wrote them
        for i in (1, 2):
            h = audit.legacy_hash(prev, "old", "s", "a", "x", "{}", f"2026-01-0{i}T00:00:00")
            conn.execute(sa.insert(audit_log).values(run_id="old", step="s", action="a", actor="x",
                                                     details="{}", created_at=f"2026-01-0{i}T00:00:00",
                                                     prev_hash=prev, hash=h, n=i))
            prev = h
    audit.append(engine, run_id="new", step="s", action="a", actor="x", key=KEY)
    v = audit.verify(engine, None, KEY)
    assert v.ok and v.unsigned == 2 and v.records == 3 and v.head is not None and v.head[0] == 3


def test_a_forged_anchor_line_is_reported(sqlite_url: str, tmp_path: Path) -> None:
    engine = _build(sqlite_url, 3, tmp_path / "anchors.jsonl")
    with (tmp_path / "anchors.jsonl").open("a") as fh:
        fh.write('{"n": 1, "hash": "00", "at": "x", "key_id": "k", "mac": "f00"}\n')
    v = audit.verify(engine, tmp_path / "anchors.jsonl", KEY)
    assert not v.ok and "not signed by this audit key" in (v.problem or "")
