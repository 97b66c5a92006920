"""The audit trail: numbered without gaps, hash-chained, signed, and anchored outside the database.

Each record carries its number ``n`` (1, 2, 3 ... with no gap), the hash of the record
before it, its own hash over everything it says, and a keyed MAC of that hash made with
the audit signing key (campaignops.secrets), which is never stored in the warehouse. So
a writer with full access to the database can still delete or rewrite rows, but cannot
make a consistent signed chain: a rewritten or inserted record fails its MAC, a deleted
one leaves a gap or a broken link. What remains is cutting the tail off cleanly; the
chain's head (number and hash) is therefore published outside the database after every
run (:func:`anchor`): an append-only anchor file, a Prefect artifact and an event.
:func:`verify` checks numbering, links, hashes, MACs and every published anchor, and
names what is wrong: a gap, a rewritten range, an appended forgery, a missing tail.

Records written before signing began (by campaignops versions without it) are kept and
verified by hash and link only; they may only precede the signed records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from campaignops.schema import audit_log

GENESIS = "0" * 64
SIGNED = "v2"


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
    n: int | None = None
    mac: str | None = None
    key_id: str | None = None


@dataclass(frozen=True)
class Anchor:
    """A published head of the chain: record number, its hash, when; signed."""

    n: int
    hash: str
    at: str
    key_id: str
    mac: str

    def line(self) -> str:
        """The anchor file's JSON line."""
        return json.dumps({"n": self.n, "hash": self.hash, "at": self.at, "key_id": self.key_id,
                           "mac": self.mac}, sort_keys=True)


@dataclass(frozen=True)
class Verification:
    """The outcome of checking the whole chain and its anchors."""

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    first_bad_n: int | None = None
    unsigned: int = 0  # records from before signing began (verified by hash and link only)
    anchors: int = 0
    head: tuple[int, str] | None = None

    @property
    def problem(self) -> str | None:
        """The first problem, if any."""
        return self.problems[0] if self.problems else None


def _canonical(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def legacy_hash(prev_hash: str, run_id: str | None, step: str, action: str, actor: str,
                details_json: str, created_at: str) -> str:
    """The hash of a record written before signing began."""
    body = "\x1f".join([prev_hash, run_id or "", step, action, actor, details_json, created_at])
    return hashlib.sha256(body.encode()).hexdigest()


def record_hash(prev_hash: str, n: int, run_id: str | None, step: str, action: str, actor: str,
                details_json: str, created_at: str) -> str:
    """The SHA-256 that numbers a record and chains it to its predecessor."""
    body = "\x1f".join([SIGNED, prev_hash, str(n), run_id or "", step, action, actor, details_json,
                        created_at])
    return hashlib.sha256(body.encode()).hexdigest()


def sign(key: bytes, text: str) -> str:
    """The keyed MAC campaignops puts on a record's hash (or an anchor)."""
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _key(key: bytes | None) -> bytes:
    if key is not None:
        return key
    from campaignops.secrets import audit_key

    return audit_key()


def append(engine: Engine, *, run_id: str | None, step: str, action: str, actor: str,
           details: dict[str, Any] | None = None, key: bytes | None = None) -> AuditRecord:
    """Append one signed record; concurrent writers retry rather than fork the chain."""
    from campaignops.sandbox.marker import is_sandbox
    from campaignops.secrets import key_id

    k = _key(key)
    kid = key_id(k)
    if is_sandbox(engine):  # every record of a sandbox warehouse says so
        details = {**(details or {}), "sandbox": True}
    details_json = _canonical(details or {})
    for _attempt in range(50):
        created = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        try:
            with engine.begin() as conn:
                last = conn.execute(
                    sa.select(audit_log.c.n, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
                ).first()
                prev = last.hash if last is not None else GENESIS
                n = int(last.n) + 1 if last is not None and last.n is not None else 1
                h = record_hash(prev, n, run_id, step, action, actor, details_json, created)
                mac = sign(k, h)
                seq = conn.execute(
                    sa.insert(audit_log).values(
                        run_id=run_id, step=step, action=action, actor=actor, details=details_json,
                        created_at=created, prev_hash=prev, hash=h, n=n, mac=mac, key_id=kid,
                    ).returning(audit_log.c.seq)
                ).scalar_one()
            return AuditRecord(int(seq), run_id, step, action, actor, json.loads(details_json),
                               created, prev, h, n, mac, kid)
        except IntegrityError:
            continue  # another writer took this tail: read the new one and retry
    raise RuntimeError("audit append kept colliding with other writers")


def _record(r: Any) -> AuditRecord:
    return AuditRecord(int(r.seq), r.run_id, r.step, r.action, r.actor, json.loads(r.details),
                       r.created_at, r.prev_hash, r.hash, None if r.n is None else int(r.n), r.mac,
                       r.key_id)


def _rows(engine: Engine, where: Any = None) -> Iterator[AuditRecord]:
    q = sa.select(audit_log).order_by(audit_log.c.seq)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        for r in conn.execution_options(yield_per=1000).execute(q):
            yield _record(r)


def trail(engine: Engine, run_id: str) -> list[AuditRecord]:
    """Every record of one run, in order (as stored: verify before trusting it)."""
    return list(_rows(engine, audit_log.c.run_id == run_id))


def of_step(engine: Engine, step: str) -> list[AuditRecord]:
    """Every record of one step across runs, in order (as stored: check each with genuine)."""
    return list(_rows(engine, audit_log.c.step == step))


def latest(engine: Engine, run_id: str, step: str, actions: tuple[str, ...] = ()) -> AuditRecord | None:
    """The run's newest record of a step (of one of ``actions`` when given), if any."""
    where = [audit_log.c.run_id == run_id, audit_log.c.step == step]
    if actions:
        where.append(audit_log.c.action.in_(actions))
    q = sa.select(audit_log).where(*where).order_by(audit_log.c.seq.desc()).limit(1)
    with engine.connect() as conn:
        r = conn.execute(q).first()
    return None if r is None else _record(r)


def genuine(rec: AuditRecord, key: bytes | None = None) -> bool:
    """True when the record's hash is right for its content and it carries a valid MAC.

    A record's place in the chain (numbering, links, anchors) is :func:`verify`'s part.
    """
    if rec.mac is None or rec.n is None:
        return False
    expected = record_hash(rec.prev_hash, rec.n, rec.run_id, rec.step, rec.action, rec.actor,
                           _canonical(rec.details), rec.created_at)
    return expected == rec.hash and hmac.compare_digest(rec.mac, sign(_key(key), rec.hash))


# -- anchors --------------------------------------------------------------------------


def head(engine: Engine) -> AuditRecord | None:
    """The chain's newest record, if any."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).first()
    return None if r is None else _record(r)


def make_anchor(rec: AuditRecord, key: bytes | None = None) -> Anchor:
    """The signed anchor of a record (normally the head)."""
    from campaignops.secrets import key_id

    k = _key(key)
    assert rec.n is not None, "only signed records are anchored"
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Anchor(rec.n, rec.hash, at, key_id(k), sign(k, f"anchor\x1f{rec.n}\x1f{rec.hash}\x1f{at}"))


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Append the anchor to the anchor file (created mode 600), flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(anchor.line() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_anchors(path: Path, key: bytes | None = None) -> tuple[list[Anchor], list[str]]:
    """The anchors of a file, and the problems of lines that are not genuine anchors."""
    if not path.is_file():
        return [], []
    k = _key(key)
    anchors, problems = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            a = Anchor(int(d["n"]), str(d["hash"]), str(d["at"]), str(d["key_id"]), str(d["mac"]))
        except (ValueError, KeyError, TypeError):
            problems.append(f"anchor file line {i} is not an anchor")
            continue
        if not hmac.compare_digest(a.mac, sign(k, f"anchor\x1f{a.n}\x1f{a.hash}\x1f{a.at}")):
            problems.append(f"anchor file line {i} is not signed by this audit key")
            continue
        anchors.append(a)
    return anchors, problems


def anchor(engine: Engine, path: Path, key: bytes | None = None) -> Anchor | None:
    """Publish the chain's head to the anchor file, after checking the chain; the anchor."""
    v = verify(engine, path, key)
    if not v.ok:
        from campaignops.errors import CampaignOpsError

        raise CampaignOpsError(f"the audit chain does not verify, so its head is not anchored: {v.problem}")
    rec = head(engine)
    if rec is None or rec.n is None:
        return None
    a = make_anchor(rec, key)
    write_anchor(path, a)
    return a


# -- verification ---------------------------------------------------------------------


def verify(engine: Engine, anchor_file: Path | None = None, key: bytes | None = None) -> Verification:
    """Check numbering, links, hashes and MACs of the whole chain, and every anchor.

    Problems are named for what they show: a gap in the numbering (records deleted), a
    broken link, a record whose content does not match its hash, a record whose MAC does
    not verify (rewritten, inserted or appended without the key), unsigned records after
    signed ones, and, against the anchors, a missing tail or a rewritten anchored record.
    """
    k = _key(key)
    problems: list[str] = []
    prev, expected_n, count, unsigned, first_bad = GENESIS, 1, 0, 0, None
    hashes: dict[int, str] = {}
    signed_started = False
    bad_macs: list[int] = []

    def bad(n: int | None, text: str) -> None:
        nonlocal first_bad
        problems.append(text)
        if first_bad is None:
            first_bad = n

    last_n = 0
    for rec in _rows(engine):
        count += 1
        if rec.mac is None:  # a record from before signing began
            if signed_started:
                bad(rec.n, f"record at position {count} is unsigned after signed records: inserted "
                           "or rewritten without the key")
            elif rec.hash != legacy_hash(rec.prev_hash, rec.run_id, rec.step, rec.action, rec.actor,
                                         _canonical(rec.details), rec.created_at):
                bad(rec.n, f"unsigned record at position {count}: content does not match its hash")
            elif rec.prev_hash != prev:
                bad(rec.n, f"unsigned record at position {count}: the link to the record before is broken")
            unsigned += 1
            prev = rec.hash
            if rec.n is not None:
                hashes[rec.n] = rec.hash
                last_n = rec.n
                expected_n = rec.n + 1
            continue
        signed_started = True
        n = rec.n if rec.n is not None else -1
        if n != expected_n:
            if n > expected_n:
                bad(n, f"records {expected_n}..{n - 1} are missing: the numbering jumps from "
                       f"{expected_n - 1} to {n} (deleted)")
            else:
                bad(n, f"record {n} appears again after record {expected_n - 1}: inserted")
        if rec.prev_hash != prev:
            bad(n, f"record {n}: the link to the record before is broken (a record before it was "
                   "deleted, inserted or rewritten)")
        expected_hash = record_hash(rec.prev_hash, n, rec.run_id, rec.step, rec.action, rec.actor,
                                    _canonical(rec.details), rec.created_at)
        if expected_hash != rec.hash:
            bad(n, f"record {n}: content does not match its hash (edited)")
        elif not hmac.compare_digest(rec.mac, sign(k, rec.hash)):
            bad_macs.append(n)
        hashes[n] = rec.hash
        prev, expected_n, last_n = rec.hash, n + 1, n
    anchors: list[Anchor] = []
    anchor_problems: list[str] = []
    if anchor_file is not None:
        anchors, anchor_problems = read_anchors(anchor_file, k)
    anchored = max((a.n for a in anchors), default=0)
    if bad_macs:
        span = f"{bad_macs[0]}" if len(bad_macs) == 1 else f"{bad_macs[0]}..{bad_macs[-1]}"
        at_end = bad_macs == list(range(bad_macs[0], last_n + 1))
        if at_end and bad_macs[0] > anchored:
            kind = "appended without the key (a forgery)"
        else:
            kind = "rewritten or inserted without the key"
        bad(bad_macs[0], f"records {span} ({len(bad_macs)}) do not carry this audit key's MAC: {kind}")
    for p in anchor_problems:
        bad(None, p)
    for a in anchors:
        if a.n > last_n:
            bad(last_n + 1, f"the tail is missing: the chain ends at record {last_n} but was "
                            f"anchored at record {a.n} on {a.at} (records deleted from the end)")
        elif hashes.get(a.n) != a.hash:
            bad(a.n, f"record {a.n} is not the record anchored on {a.at}: the chain was rewritten "
                     f"up to record {a.n}")
    head_ = (last_n, prev) if count else None
    return Verification(not problems, count, problems, first_bad, unsigned, len(anchors), head_)
