"""Send handoff: the approved audience to the ESP exactly once, or as a file drop.

Plain functions on a warehouse :class:`~sqlalchemy.engine.Engine` (no Prefect
here; the flow's tasks call them).

Exactly once rests on three things:

1. Batches are a pure function of the approved audience: recipients of the run
   (``co_audience.outcome IN ('send', 'seed')``) ordered by
   ``(is_seed, customer_id, address_key)`` and cut every ``batch_size`` rows,
   so a rerun rebuilds the same batches, the same idempotency keys
   (``{run_id}:batch-{seq}``) and the same bodies.
2. The ESP deduplicates on the key (a retry or rerun of an acknowledged batch
   is a replay; a different body under the same key is a 422, never a send).
3. ``co_ledger`` records each acknowledged batch with the sha256 of its
   recipients (one transaction per 202). A rerun skips ledgered batches whose
   digest still matches and fails with :class:`HandoffError` when a ledgered
   batch's digest changed (the audience changed after a partial send: resending
   would cut it differently and could send someone twice or skip them).

Split batches: on 413 a batch is halved (recursively) and the parts go under
``{run_id}:batch-{seq}.{part}`` (``.0``, ``.1``, ``.1.0`` ...), derived only
from the batch and the ESP's limit, so a rerun cuts it the same way. The ledger
key is ``(run_id, batch_seq)``, so the parts are recorded as ONE row for the
parent batch, written after every part was acknowledged: ``idempotency_key`` is
``{run_id}:batch-{seq}.*``, ``recipients/accepted/rejected`` are the sums over
the parts and ``esp_batch_id`` lists the parts' batch ids (or their number when
that does not fit). A crash between parts leaves no ledger row; the rerun
resends every part, the acknowledged ones come back as replays.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from campaignops.db import audience, contact_history, ledger, runs
from campaignops.errors import HandoffError
from campaignops.esp.client import BatchAck, BatchTooLarge, idempotency_key

log = logging.getLogger("campaignops.handoff")

PERSONALISATION_FIELDS = ("first_name", "last_name", "language", "country", "loyalty_tier")
RECIPIENT_OUTCOMES = ("send", "seed")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BatchPoster(Protocol):
    """What send_audience needs from an ESP client (EspClient or a wrapper)."""

    def post_batch(
        self,
        campaign_id: str,
        run_id: str,
        batch_seq: int,
        payload: dict[str, Any],
        *,
        part: str | None = None,
    ) -> BatchAck: ...


class RunSummarySource(Protocol):
    """What reconcile needs from an ESP client."""

    def run_summary(self, campaign_id: str, run_id: str) -> dict[str, int]: ...


@dataclass
class HandoffReport:
    """Counts of one send_audience call (no addresses anywhere).

    ``accepted``/``rejected`` cover every batch of the run (skipped batches
    count from the ledger); ``rejected_reasons`` covers the batches posted by
    this call only (the ledger keeps counts, not reasons).
    """

    run_id: str
    batches: int = 0
    sent: int = 0
    skipped: int = 0
    recipients: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    split: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reconciliation:
    """Approved recipients against the ESP's run summary and our ledger."""

    approved: int
    accepted: int
    rejected: int
    matches: bool
    esp_batches: int = 0
    ledger_batches: int = 0
    ledger_recipients: int = 0
    ledger_accepted: int = 0
    ledger_rejected: int = 0


@dataclass(frozen=True)
class FileDrop:
    """A CSV of the recipients and its manifest (row count and sha256)."""

    csv_path: Path
    manifest_path: Path
    rows: int
    sha256: str


class _Stopped(Exception):
    """A queued batch that did not start because another one failed."""


@dataclass
class _Outcome:
    seq: int
    recipients: int
    accepted: int
    rejected_reasons: Counter[str]
    replayed: int
    parts: int


# -- batches ------------------------------------------------------------------
def _check_fields(fields: Sequence[str]) -> list[str]:
    unknown = [f for f in fields if f not in PERSONALISATION_FIELDS]
    if unknown:
        raise HandoffError(
            f"unknown personalisation field(s) {', '.join(unknown)}: "
            f"use {', '.join(PERSONALISATION_FIELDS)}"
        )
    return list(dict.fromkeys(fields))


def _recipients_query(run_id: str, fields: Sequence[str]) -> sa.Select[Any]:
    a = audience.c
    return (
        sa.select(
            a.customer_id, a.email, a.address_key, a.cell, a.offer_code, a.is_seed,
            *[a[f] for f in fields],
        )
        .where(a.run_id == run_id, a.outcome.in_(RECIPIENT_OUTCOMES))
        .order_by(a.is_seed, a.customer_id.is_(None), a.customer_id, a.address_key, a.row_id)
    )


def _to_recipients(
    rows: Sequence[Any], fields: Sequence[str], fallbacks: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Rows of _recipients_query as contract recipients (positional: this is the hot loop)."""
    names = tuple(fields)
    filled = [(i, fallbacks[f]) for i, f in enumerate(names) if fallbacks.get(f) is not None]
    out: list[dict[str, Any]] = []
    append = out.append
    for customer_id, email, address_key, cell, offer_code, is_seed, *values in rows:
        for i, fallback in filled:
            v = values[i]
            if v is None or (isinstance(v, str) and not v.strip()):
                values[i] = fallback
        append(
            {
                "customer_id": None if customer_id is None else int(customer_id),
                "address": email or address_key or "",
                "cell": cell,
                "offer_code": offer_code,
                "fields": dict(zip(names, values, strict=True)),
                "seed": bool(is_seed),
            }
        )
    return out


def iter_batches(
    engine: Engine,
    run_id: str,
    batch_size: int,
    fields: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
) -> Generator[tuple[int, list[dict[str, Any]]], None, None]:
    """``(batch_seq, recipients)`` for a run, streamed from the database.

    Order ``(is_seed, customer_id, address_key)`` makes the cut deterministic;
    rows are fetched ``batch_size`` at a time from one streaming cursor, so
    memory holds one batch, never the whole audience.
    """
    if batch_size < 1:
        raise HandoffError(f"batch_size must be at least 1 (got {batch_size})")
    cols = _check_fields(fields)
    fb = dict(fallbacks or {})
    stmt = _recipients_query(run_id, cols)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
        for seq, rows in enumerate(result.partitions(batch_size)):
            yield seq, _to_recipients(rows, cols, fb)


def batch_digest(recipients: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of a batch's recipients (sorted keys, no spaces, UTF-8).

    orjson gives, for the strings, integers, booleans and nulls of a batch, the
    bytes of ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    (the digests in existing ledgers stay valid) about ten times faster.
    """
    return hashlib.sha256(orjson.dumps(recipients, option=orjson.OPT_SORT_KEYS)).hexdigest()


def count_recipients(engine: Engine, run_id: str) -> int:
    """How many approved recipients (send and seed rows) the run has."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(audience).where(
                    audience.c.run_id == run_id, audience.c.outcome.in_(RECIPIENT_OUTCOMES)
                )
            ).scalar_one()
        )


def _utc_naive(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _iso_z(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _utc_aware(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def check_send_time(send_at: datetime | None, now: datetime, grace: timedelta) -> None:
    """Refuse to hand off a campaign whose ``send_at`` is past by more than ``grace``.

    ``None`` means "send as soon as approved" and always passes; a future
    ``send_at`` passes and travels in every batch, so the ESP holds the send until
    then. Naive datetimes are taken as UTC. Raises :class:`HandoffError` (one
    line naming send_at and the fix).
    """
    if grace < timedelta(0):
        raise HandoffError(
            f"send grace {grace} is negative: set CAMPAIGNOPS_SEND_GRACE_MINUTES to 0 or more"
        )
    if send_at is None:
        return
    late = _utc_aware(now) - _utc_aware(send_at)
    if late > grace:
        raise HandoffError(
            f"send_at {_iso_z(send_at)} passed {_span(late)} ago, more than the "
            f"{_span(grace)} grace: nothing was sent; set a future send_at (or null) in the "
            "brief and start a new run, or raise CAMPAIGNOPS_SEND_GRACE_MINUTES"
        )


# -- ledger -------------------------------------------------------------------
def ledgered_batches(engine: Engine, run_id: str) -> int:
    """How many batches of the run the ESP acknowledged (rows in co_ledger)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(ledger).where(ledger.c.run_id == run_id)
            ).scalar_one()
        )


def _load_ledger(engine: Engine, run_id: str) -> dict[int, Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger).where(ledger.c.run_id == run_id)).all()
    return {int(r.batch_seq): r for r in rows}


_LEDGER_INSERT = ledger.insert()  # one construct, compiled once (the statement cache)


def _record_ledger(
    engine: Engine,
    *,
    run_id: str,
    seq: int,
    key: str,
    digest: str,
    recipients: int,
    accepted: int,
    rejected: int,
    esp_batch_id: str | None,
) -> None:
    """One transaction per acknowledged batch; a concurrent twin must agree."""
    try:
        with engine.begin() as conn:
            conn.execute(
                _LEDGER_INSERT,
                {
                    "run_id": run_id, "batch_seq": seq, "idempotency_key": key,
                    "batch_digest": digest, "recipients": recipients, "accepted": accepted,
                    "rejected": rejected, "esp_batch_id": esp_batch_id,
                    "acked_at": datetime.now(UTC).replace(tzinfo=None),
                },
            )
    except IntegrityError:
        with engine.connect() as conn:
            existing = conn.execute(
                sa.select(ledger.c.batch_digest).where(
                    ledger.c.run_id == run_id, ledger.c.batch_seq == seq
                )
            ).scalar_one_or_none()
        if existing != digest:
            raise HandoffError(
                f"run {run_id} batch {seq}: another sender ledgered a different batch"
            ) from None


# -- send ---------------------------------------------------------------------
def _post_parts(
    client: BatchPoster,
    campaign_id: str,
    run_id: str,
    seq: int,
    payload: dict[str, Any],
    recipients: list[dict[str, Any]],
    prefix: str,
) -> list[BatchAck]:
    """Halve a batch the ESP found too large, recursively, with deterministic keys."""
    if len(recipients) < 2:
        raise HandoffError(
            f"ESP batch {idempotency_key(run_id, seq, prefix or None)}: 413 for a single recipient"
        )
    mid = (len(recipients) + 1) // 2
    acks: list[BatchAck] = []
    for i, half in enumerate((recipients[:mid], recipients[mid:])):
        part = f"{prefix}.{i}" if prefix else str(i)
        try:
            acks.append(
                client.post_batch(
                    campaign_id, run_id, seq, {**payload, "recipients": half}, part=part
                )
            )
        except BatchTooLarge:
            acks.extend(_post_parts(client, campaign_id, run_id, seq, payload, half, part))
    return acks


def _send_one(
    engine: Engine,
    client: BatchPoster,
    campaign_id: str,
    run_id: str,
    seq: int,
    recipients: list[dict[str, Any]],
    digest: str,
    base_payload: dict[str, Any],
) -> _Outcome:
    payload = {**base_payload, "recipients": recipients}
    key = idempotency_key(run_id, seq)
    try:
        acks = [client.post_batch(campaign_id, run_id, seq, payload)]
        ledger_key, esp_id = key, acks[0].batch_id
    except BatchTooLarge:
        acks = _post_parts(client, campaign_id, run_id, seq, base_payload, recipients, "")
        ids = ",".join(a.batch_id for a in acks)
        ledger_key, esp_id = f"{key}.*", ids if len(ids) <= 128 else f"{len(acks)} parts"
    accepted = sum(a.accepted for a in acks)
    reasons: Counter[str] = Counter(str(r.get("reason")) for a in acks for r in a.rejected)
    rejected = sum(reasons.values())
    _record_ledger(
        engine, run_id=run_id, seq=seq, key=ledger_key, digest=digest,
        recipients=len(recipients), accepted=accepted, rejected=rejected, esp_batch_id=esp_id[:128],
    )
    return _Outcome(
        seq=seq, recipients=len(recipients), accepted=accepted, rejected_reasons=reasons,
        replayed=sum(1 for a in acks if a.replayed), parts=len(acks) if len(acks) > 1 else 0,
    )


def send_audience(
    engine: Engine,
    client: BatchPoster,
    *,
    campaign_id: str,
    run_id: str,
    template_id: str,
    send_at: datetime | None,
    batch_size: int,
    fields: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
    max_in_flight: int = 4,
) -> HandoffReport:
    """Post every batch of the run not yet in the ledger, ``max_in_flight`` at a time.

    Memory stays flat: batches are built from a streaming cursor and at most
    ``2 * max_in_flight`` are pending at once. The first failure stops new
    submissions; batches already in flight finish (and are ledgered) before the
    error propagates, so a rerun resumes after them.
    """
    if max_in_flight < 1 or batch_size < 1:
        raise HandoffError(
            f"max_in_flight and batch_size must be at least 1 (got {max_in_flight}, {batch_size})"
        )
    started = time.perf_counter()
    report = HandoffReport(run_id=run_id)
    total = count_recipients(engine, run_id)
    expected_batches = -(-total // batch_size)
    ledgered = _load_ledger(engine, run_id)
    stale = sorted(s for s in ledgered if s >= expected_batches)
    if stale:
        raise HandoffError(
            f"run {run_id}: the ledger has batch {stale[0]} but the audience now makes only "
            f"{expected_batches} batches: the audience changed after a partial send"
        )
    base_payload = {"template_id": template_id, "send_at": _iso_z(send_at)}
    reasons: Counter[str] = Counter()

    def absorb(fut: Future[_Outcome]) -> None:
        out = fut.result()
        report.sent += 1
        report.accepted += out.accepted
        report.rejected += sum(out.rejected_reasons.values())
        reasons.update(out.rejected_reasons)
        report.replayed += out.replayed
        report.split += 1 if out.parts else 0

    stop = threading.Event()  # set by the first failure: queued batches do not start
    pending: set[Future[_Outcome]] = set()
    seq_of: dict[Future[_Outcome], int] = {}

    def task(seq: int, recipients: list[dict[str, Any]]) -> _Outcome:
        if stop.is_set():
            raise _Stopped
        try:
            digest = batch_digest(recipients)  # here, off the thread that reads the audience
            return _send_one(
                engine, client, campaign_id, run_id, seq, recipients, digest, base_payload
            )
        except BaseException:
            stop.set()
            raise

    def collect(everything: bool) -> None:
        nonlocal pending
        done, pending = wait(pending, return_when=ALL_COMPLETED if everything else FIRST_COMPLETED)
        failures: list[tuple[int, BaseException]] = []
        while True:
            for fut in done:
                exc = fut.exception()
                if exc is None:
                    absorb(fut)
                elif not isinstance(exc, _Stopped):
                    failures.append((seq_of[fut], exc))
                seq_of.pop(fut, None)
            if not stop.is_set() or not pending:
                break
            done, pending = wait(pending)  # in-flight batches finish and are ledgered
        if failures:
            raise min(failures, key=lambda f: f[0])[1]

    executor = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="esp-handoff")
    batches = iter_batches(engine, run_id, batch_size, fields, fallbacks)
    try:
        for seq, recipients in batches:
            report.batches += 1
            report.recipients += len(recipients)
            row = ledgered.get(seq)
            if row is not None:
                digest = batch_digest(recipients)
                if row.batch_digest != digest:
                    raise HandoffError(
                        f"run {run_id} batch {seq}: acknowledged with digest "
                        f"{row.batch_digest[:12]} but the audience now gives {digest[:12]}: "
                        "the audience changed after a partial send; not resending"
                    )
                report.skipped += 1
                report.accepted += int(row.accepted)
                report.rejected += int(row.rejected)
                continue
            while len(pending) >= 2 * max_in_flight:
                collect(everything=False)
            fut = executor.submit(task, seq, recipients)
            seq_of[fut] = seq
            pending.add(fut)
        while pending:
            collect(everything=True)
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
        batches.close()
    if report.batches != expected_batches:
        raise HandoffError(
            f"run {run_id}: the audience changed during the handoff "
            f"({report.batches} batches sent, {expected_batches} expected)"
        )
    report.rejected_reasons = dict(sorted(reasons.items()))
    report.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "handoff %s: %d batches (%d sent, %d skipped), %d recipients, %d accepted, %d rejected",
        run_id, report.batches, report.sent, report.skipped, report.recipients,
        report.accepted, report.rejected,
    )
    return report


def reconcile(
    engine: Engine, client: RunSummarySource, campaign_id: str, run_id: str
) -> Reconciliation:
    """Approved recipients == accepted + rejected at the ESP, and the ledger agrees."""
    approved = count_recipients(engine, run_id)
    with engine.connect() as conn:
        lb, lr, la, lj = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(ledger.c.recipients), 0),
                sa.func.coalesce(sa.func.sum(ledger.c.accepted), 0),
                sa.func.coalesce(sa.func.sum(ledger.c.rejected), 0),
            ).where(ledger.c.run_id == run_id)
        ).one()
    esp = client.run_summary(campaign_id, run_id)
    accepted, rejected = int(esp["accepted"]), int(esp["rejected"])
    matches = (
        approved == accepted + rejected
        and int(lr) == approved
        and int(la) == accepted
        and int(lj) == rejected
    )
    return Reconciliation(
        approved=approved, accepted=accepted, rejected=rejected, matches=matches,
        esp_batches=int(esp["batches"]), ledger_batches=int(lb), ledger_recipients=int(lr),
        ledger_accepted=int(la), ledger_rejected=int(lj),
    )


# -- contact history ----------------------------------------------------------
def write_contact_history(
    engine: Engine, run_id: str, campaign_id: str, sent_at: datetime, channel: str = "email"
) -> int:
    """Insert the run's sends (not seeds, not control) into contact_history once.

    ``co_runs.contact_history_written`` is flipped in the same transaction as
    the INSERT ... SELECT; a second call finds it set and returns 0.
    """
    when = _utc_naive(sent_at)
    with engine.begin() as conn:
        claimed = conn.execute(
            sa.update(runs)
            .where(
                runs.c.run_id == run_id,
                sa.or_(runs.c.contact_history_written == sa.false(),
                       runs.c.contact_history_written.is_(None)),
            )
            .values(contact_history_written=True)
        ).rowcount
        if claimed != 1:
            exists = conn.execute(
                sa.select(runs.c.run_id).where(runs.c.run_id == run_id)
            ).first()
            if exists is None:
                raise HandoffError(f"run {run_id} is not in co_runs: cannot write contact history")
            return 0
        a = audience.c
        select = sa.select(
            a.customer_id,
            sa.literal(campaign_id, sa.String(128)),
            a.run_id,
            sa.literal(channel, sa.String(8)),
            a.cell,
            a.offer_code,
            sa.literal(when, sa.DateTime()),
        ).where(
            a.run_id == run_id,
            a.outcome == "send",
            a.is_seed == sa.false(),
            a.customer_id.is_not(None),
        )
        inserted = conn.execute(
            contact_history.insert().from_select(
                ["customer_id", "campaign_id", "run_id", "channel", "cell", "offer_code",
                 "sent_at"],
                select,
            ),
            execution_options={"preserve_rowcount": True},  # INSERT rowcount on psycopg too
        ).rowcount
    return int(inserted)


# -- file drop ----------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file_drop(
    engine: Engine,
    run_id: str,
    folder: Path,
    fields: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
    batch_size: int = 5000,
) -> FileDrop:
    """``{run_id}.csv`` plus ``{run_id}.manifest.json`` (rows, sha256, columns).

    Both are streamed to temporary files in ``folder`` and moved into place with
    ``os.replace``: the CSV first, then the manifest, so a manifest always
    describes a complete CSV. A failure midway removes the temporary files and
    leaves no partial CSV or manifest behind.
    """
    if not _SAFE_NAME.match(run_id):
        raise HandoffError(f"run id {run_id!r} is not usable as a file name")
    cols = _check_fields(fields)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{run_id}.csv"
    manifest_path = folder / f"{run_id}.manifest.json"
    columns = ["customer_id", "address", "cell", "offer_code", "seed", *cols]
    digest = hashlib.sha256()
    rows = 0
    temps: list[str] = []
    try:
        fd, tmp_csv = tempfile.mkstemp(dir=folder, prefix=f".{run_id}.", suffix=".csv.tmp")
        temps.append(tmp_csv)
        with os.fdopen(fd, "wb") as out:

            def emit(records: list[list[Any]]) -> None:
                buf = io.StringIO()
                csv.writer(buf).writerows(records)
                data = buf.getvalue().encode()
                digest.update(data)
                out.write(data)

            emit([columns])
            for _, batch in iter_batches(engine, run_id, batch_size, cols, fallbacks):
                emit(
                    [
                        [
                            "" if r["customer_id"] is None else r["customer_id"],
                            r["address"], r["cell"] or "", r["offer_code"] or "",
                            "true" if r["seed"] else "false",
                            *["" if r["fields"][f] is None else r["fields"][f] for f in cols],
                        ]
                        for r in batch
                    ]
                )
                rows += len(batch)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        manifest = {
            "run_id": run_id,
            "csv": csv_path.name,
            "rows": rows,
            "sha256": sha,
            "columns": columns,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        fd, tmp_manifest = tempfile.mkstemp(
            dir=folder, prefix=f".{run_id}.", suffix=".manifest.tmp"
        )
        temps.append(tmp_manifest)
        with os.fdopen(fd, "w", encoding="utf-8") as mf:
            json.dump(manifest, mf, indent=2, sort_keys=True)
            mf.write("\n")
            mf.flush()
            os.fsync(mf.fileno())
        manifest_path.unlink(missing_ok=True)  # an old manifest must not describe the new CSV
        os.replace(tmp_csv, csv_path)
        os.replace(tmp_manifest, manifest_path)
        temps.clear()
        _fsync_dir(folder)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return FileDrop(csv_path=csv_path, manifest_path=manifest_path, rows=rows, sha256=sha)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A drop's manifest as a dict, or None when there is no such file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise HandoffError(f"manifest {Path(path).name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise HandoffError(f"manifest {Path(path).name} is not a JSON object")
    return data


def discard_file_drop(drop: FileDrop) -> None:
    """Remove a drop's CSV and manifest (the manifest first); missing files are fine."""
    for path in (drop.manifest_path, drop.csv_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def release_file_drop(staged: FileDrop, folder: Path) -> tuple[FileDrop, bool]:
    """Move a checked drop from its staging folder into ``folder``: CSV first, manifest last.

    Returns the released drop and whether this call released it. A drop of the same run
    already in ``folder`` with the same sha256 and rows is left untouched (a rerun changes
    nothing); one with other content is refused, since the ESP may have imported it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    released = FileDrop(
        csv_path=folder / staged.csv_path.name, manifest_path=folder / staged.manifest_path.name,
        rows=staged.rows, sha256=staged.sha256,
    )
    existing = read_manifest(released.manifest_path)
    if existing is not None:
        if existing.get("sha256") == staged.sha256 and existing.get("rows") == staged.rows:
            discard_file_drop(staged)
            return released, False
        raise HandoffError(
            f"file drop mismatch: {released.manifest_path.name} is already released with sha256 "
            f"{str(existing.get('sha256'))[:12]} but the run now makes {staged.sha256[:12]}: "
            "not replacing a file the ESP may have imported; move it away to release again"
        )
    os.replace(staged.csv_path, released.csv_path)
    os.replace(staged.manifest_path, released.manifest_path)
    _fsync_dir(folder)
    return released, True
