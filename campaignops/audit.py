"""The audit trail: append-only, each record chained to the hash of the one before."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from campaignops.schema import audit_log

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """One line of the trail."""

    seq: int
    run_id: str | None
    step: str
    action: str
    actor: str
    details: dict[str, Any]
    created_at: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verification:
    """The outcome of re-computing the whole chain."""

    ok: bool
    records: int
    first_bad_seq: int | None
    problem: str | None


def _canonical(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def record_hash(prev_hash: str, run_id: str | None, step: str, action: str, actor: str,
                details_json: str, created_at: str) -> str:
    """The SHA-256 that chains a record to its predecessor."""
    body = "\x1f".join([prev_hash, run_id or "", step, action, actor, details_json, created_at])
    return hashlib.sha256(body.encode()).hexdigest()


def append(engine: Engine, *, run_id: str | None, step: str, action: str, actor: str,
           details: dict[str, Any] | None = None) -> AuditRecord:
    """Append one record; concurrent writers retry rather than fork the chain."""
    details_json = _canonical(details or {})
    for _attempt in range(50):
        created = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        try:
            with engine.begin() as conn:
                last = conn.execute(
                    sa.select(audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
                ).scalar()
                prev = last or GENESIS
                h = record_hash(prev, run_id, step, action, actor, details_json, created)
                seq = conn.execute(
                    sa.insert(audit_log).values(
                        run_id=run_id, step=step, action=action, actor=actor,
                        details=details_json, created_at=created, prev_hash=prev, hash=h,
                    ).returning(audit_log.c.seq)
                ).scalar_one()
            return AuditRecord(int(seq), run_id, step, action, actor, json.loads(details_json),
                               created, prev, h)
        except IntegrityError:
            continue  # another writer took this tail: read the new one and retry
    raise RuntimeError("audit append kept colliding with other writers")


def _rows(engine: Engine, where: Any = None) -> Iterator[AuditRecord]:
    q = sa.select(audit_log).order_by(audit_log.c.seq)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        for r in conn.execution_options(yield_per=1000).execute(q):
            yield AuditRecord(int(r.seq), r.run_id, r.step, r.action, r.actor,
                              json.loads(r.details), r.created_at, r.prev_hash, r.hash)


def trail(engine: Engine, run_id: str) -> list[AuditRecord]:
    """Every record of one run, in order."""
    return list(_rows(engine, audit_log.c.run_id == run_id))


def latest(engine: Engine, run_id: str, step: str, actions: tuple[str, ...] = ()) -> AuditRecord | None:
    """The run's newest record of a step (of one of ``actions`` when given), if any."""
    where = [audit_log.c.run_id == run_id, audit_log.c.step == step]
    if actions:
        where.append(audit_log.c.action.in_(actions))
    q = sa.select(audit_log).where(*where).order_by(audit_log.c.seq.desc()).limit(1)
    with engine.connect() as conn:
        r = conn.execute(q).first()
    if r is None:
        return None
    return AuditRecord(int(r.seq), r.run_id, r.step, r.action, r.actor, json.loads(r.details),
                       r.created_at, r.prev_hash, r.hash)


def verify(engine: Engine) -> Verification:
    """Re-compute every hash and link; name the first record that does not hold."""
    prev = GENESIS
    n = 0
    for rec in _rows(engine):
        n += 1
        if rec.prev_hash != prev:
            return Verification(False, n, rec.seq, "link to the previous record is broken")
        expected = record_hash(rec.prev_hash, rec.run_id, rec.step, rec.action, rec.actor,
                               _canonical(rec.details), rec.created_at)
        if expected != rec.hash:
            return Verification(False, n, rec.seq, "record content does not match its hash")
        prev = rec.hash
    return Verification(True, n, None, None)
