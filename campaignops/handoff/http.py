"""ESP handoff over HTTP: the approved audience posted exactly once, then reconciled.

Exactly once rests on three things:

1. Batches are a pure function of the approved audience (campaignops.handoff.batches), so
   a rerun rebuilds the same batches, the same idempotency keys (``{run_id}:batch-{seq}``)
   and the same bodies.
2. The ESP deduplicates on the key (a retry or rerun of an acknowledged batch is a replay;
   a different body under the same key is a 422, never a send).
3. ``co_ledger`` records each acknowledged batch with the sha256 of its recipients (one
   transaction per 202). A rerun skips ledgered batches whose digest still matches and
   refuses when a ledgered batch's digest changed (the audience changed after a partial
   send: resending would cut it differently and could send someone twice or skip them).

Split batches: on 413 a batch is halved (recursively) and the parts go under
``{run_id}:batch-{seq}.{part}`` (``.0``, ``.1``, ``.1.0`` ...), derived only from the batch
and the ESP's limit, so a rerun cuts it the same way. The ledger key is
``(run_id, batch_seq)``, so the parts are recorded as ONE row for the parent batch, written
after every part was acknowledged: ``idempotency_key`` is ``{run_id}:batch-{seq}.*``,
``recipients/accepted/rejected`` are the sums over the parts and ``esp_batch_id`` lists
the parts' batch ids (or their number when that does not fit). A crash between parts
leaves no ledger row; the rerun resends every part, the acknowledged ones come back as
replays.

Retries: one layer. The ESP client retries a batch (429/409 after Retry-After, 5xx and
transport errors with backoff) up to its ``max_attempts``; when that budget is spent it
raises EspUnavailable, which no Prefect task retry repeats (``campaignops resume`` goes on
from the ledger later). So a batch is posted at most ``max_attempts`` times per handoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from campaignops import audit, runs
from campaignops.brief import Brief
from campaignops.errors import (
    CampaignOpsError,
    EspRejected,
    HandoffError,
    HandoffMismatch,
    HandoffRefused,
)
from campaignops.esp.client import BatchAck, BatchTooLarge, idempotency_key
from campaignops.handoff.batches import (
    SmsMessage,
    batch_digest,
    count_recipients,
    iter_batches,
    personalisation,
)
from campaignops.handoff.file import released_file
from campaignops.handoff.outbox import Outbox
from campaignops.handoff.outbox import batches as outbox_batches
from campaignops.handoff.outbox import recipients as outbox_recipients
from campaignops.handoff.send_time import iso_z
from campaignops.handoff.sms import sms_message
from campaignops.schema import ledger
from campaignops.secrets import load_esp_token
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

log = logging.getLogger("campaignops.handoff")
SYSTEM = "campaignops"

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
        channel: str = "email",
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
    segments: int = 0  # SMS: the segments the ESP billed for the batches posted by this call

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
    segments: int | None = None  # SMS: the segments the ESP bills for the run
    expected_segments: int | None = None  # SMS: the segments of the accepted messages, counted here


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
    segments: int = 0


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
    rejections: list[dict[str, Any]] | None = None,
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
                    "rejections": orjson.dumps(rejections).decode() if rejections else None,
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
            raise HandoffRefused(
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
    channel: str = "email",
) -> list[BatchAck]:
    """Halve a batch the ESP found too large, recursively, with deterministic keys."""
    if len(recipients) < 2:
        raise EspRejected(
            f"ESP batch {idempotency_key(run_id, seq, prefix or None)}: 413 for a single recipient"
        )
    mid = (len(recipients) + 1) // 2
    acks: list[BatchAck] = []
    for i, half in enumerate((recipients[:mid], recipients[mid:])):
        part = f"{prefix}.{i}" if prefix else str(i)
        try:
            acks.append(
                client.post_batch(
                    campaign_id, run_id, seq, {**payload, "recipients": half}, part=part,
                    channel=channel,
                )
            )
        except BatchTooLarge:
            acks.extend(_post_parts(client, campaign_id, run_id, seq, payload, half, part, channel))
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
    channel: str = "email",
) -> _Outcome:
    payload = {**base_payload, "recipients": recipients}
    key = idempotency_key(run_id, seq)
    try:
        acks = [client.post_batch(campaign_id, run_id, seq, payload, channel=channel)]
        ledger_key, esp_id = key, acks[0].batch_id
    except BatchTooLarge:
        acks = _post_parts(client, campaign_id, run_id, seq, base_payload, recipients, "", channel)
        ids = ",".join(a.batch_id for a in acks)
        ledger_key, esp_id = f"{key}.*", ids if len(ids) <= 128 else f"{len(acks)} parts"
    accepted = sum(a.accepted for a in acks)
    reasons: Counter[str] = Counter(str(r.get("reason")) for a in acks for r in a.rejected)
    rejected = sum(reasons.values())
    _record_ledger(
        engine, run_id=run_id, seq=seq, key=ledger_key, digest=digest,
        recipients=len(recipients), accepted=accepted, rejected=rejected, esp_batch_id=esp_id[:128],
        rejections=[{"customer_id": r.get("customer_id"), "reason": str(r.get("reason"))[:200]}
                    for a in acks for r in a.rejected],
    )
    return _Outcome(
        seq=seq, recipients=len(recipients), accepted=accepted, rejected_reasons=reasons,
        replayed=sum(1 for a in acks if a.replayed), parts=len(acks) if len(acks) > 1 else 0,
        segments=sum(a.segments for a in acks),
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
    outbox: Outbox | None = None,
    sms: SmsMessage | None = None,
) -> HandoffReport:
    """Post every batch of the run not yet in the ledger, ``max_in_flight`` at a time.

    ``sms`` makes it an SMS run: the batches go to the ESP's SMS endpoint with the text.

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
    total = outbox.recipients if outbox is not None else count_recipients(engine, run_id)
    expected_batches = -(-total // batch_size)
    ledgered = _load_ledger(engine, run_id)
    stale = sorted(s for s in ledgered if s >= expected_batches)
    if stale:
        raise HandoffRefused(
            f"run {run_id}: the ledger has batch {stale[0]} but the audience now makes only "
            f"{expected_batches} batches: the audience changed after a partial send"
        )
    base_payload: dict[str, Any] = {"template_id": template_id, "send_at": iso_z(send_at)}
    channel = "email" if sms is None else "sms"
    if sms is not None:
        base_payload |= sms.payload()
    reasons: Counter[str] = Counter()

    def absorb(fut: Future[_Outcome]) -> None:
        out = fut.result()
        report.sent += 1
        report.accepted += out.accepted
        report.rejected += sum(out.rejected_reasons.values())
        reasons.update(out.rejected_reasons)
        report.replayed += out.replayed
        report.split += 1 if out.parts else 0
        report.segments += out.segments

    stop = threading.Event()  # set by the first failure: queued batches do not start
    pending: set[Future[_Outcome]] = set()
    seq_of: dict[Future[_Outcome], int] = {}

    def task(seq: int, recipients: list[dict[str, Any]]) -> _Outcome:
        if stop.is_set():
            raise _Stopped
        try:
            digest = batch_digest(recipients)  # here, off the thread that reads the audience
            return _send_one(
                engine, client, campaign_id, run_id, seq, recipients, digest, base_payload, channel
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
    batches = (outbox_batches(outbox, batch_size) if outbox is not None
               else iter_batches(engine, run_id, batch_size, fields, fallbacks, sms))
    try:
        for seq, recipients in batches:
            report.batches += 1
            report.recipients += len(recipients)
            row = ledgered.get(seq)
            if row is not None:
                digest = batch_digest(recipients)
                if row.batch_digest != digest:
                    raise HandoffRefused(
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
        raise HandoffRefused(
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
    engine: Engine, client: RunSummarySource, campaign_id: str, run_id: str,
    approved: int | None = None, expected_segments: int | None = None,
) -> Reconciliation:
    """Approved recipients == accepted + rejected at the ESP, and the ledger agrees.

    ``approved`` is the count of the approved outbox (default: counted in co_audience). An SMS
    run's ``expected_segments`` (the segments of the messages the ESP accepted, counted by
    campaignops) must also equal the segments the ESP bills.
    """
    approved = count_recipients(engine, run_id) if approved is None else approved
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
    billed = esp.get("segments")
    matches = (
        approved == accepted + rejected
        and int(lr) == approved
        and int(la) == accepted
        and int(lj) == rejected
        and (expected_segments is None or billed == expected_segments)
    )
    return Reconciliation(
        approved=approved, accepted=accepted, rejected=rejected, matches=matches,
        esp_batches=int(esp["batches"]), ledger_batches=int(lb), ledger_recipients=int(lr),
        ledger_accepted=int(la), ledger_rejected=int(lj),
        segments=None if billed is None else int(billed), expected_segments=expected_segments,
    )


def expected_segments(engine: Engine, outbox: Outbox) -> int:
    """The segments of the outbox's messages that the ESP accepted (its rejections from the ledger)."""
    with engine.connect() as conn:
        texts = conn.execute(sa.select(ledger.c.rejections).where(
            ledger.c.run_id == outbox.run_id, ledger.c.rejections.is_not(None))).scalars().all()
    rejected = {r["customer_id"] for t in texts for r in orjson.loads(t) if r.get("customer_id") is not None}
    return sum(int(r.get("segments") or 0) for r in outbox_recipients(outbox)
               if r["customer_id"] not in rejected)


@dataclass(frozen=True)
class HttpHandoff:
    """An HTTP handoff: what was posted now, and the reconciliation with the ESP."""

    run_id: str
    report: HandoffReport
    reconciliation: Reconciliation
    mode: str = "http"

    @property
    def approved(self) -> int:
        """Recipients approved for the run."""
        return self.reconciliation.approved

    @property
    def reconciled(self) -> bool:
        """True when the ESP's and the ledger's counts equal the approved recipients."""
        return self.reconciliation.matches


def esp_token(settings: Settings, run_id: str) -> SecretStr:
    """The ESP token, before anything is staged or sent; HandoffRefused naming the fix if missing."""
    try:
        return load_esp_token(settings)
    except CampaignOpsError as exc:
        raise HandoffRefused(f"run {run_id}: nothing was sent: {exc}") from None


def send_over_http(wh: Warehouse, settings: Settings, run_id: str, brief: Brief,
                   outbox: Outbox, token: SecretStr) -> HttpHandoff:
    """Post the staged outbox to the ESP in idempotent batches, then reconcile (audited)."""
    from campaignops.esp.client import EspClient

    engine = wh.engine
    released = released_file(engine, run_id)
    if released is not None:
        raise HandoffRefused(
            f"run {run_id} was already handed off as file {released['files']['csv']}: nothing was "
            "sent; rerun it with CAMPAIGNOPS_HANDOFF_MODE=file"
        )
    # A rerun must rebuild exactly the batches (and keys) of the first attempt.
    batch_size = runs.get_batch_size(engine, run_id) or settings.esp_batch_size
    runs.set_status(engine, run_id, runs.HANDING_OFF, batch_size=batch_size)
    fields, fallbacks = personalisation(brief)
    sms = sms_message(engine, run_id, brief)
    with EspClient(settings.esp_url, token, timeout=settings.esp_timeout_seconds,
                   max_attempts=settings.esp_max_attempts,
                   backoff_base=settings.esp_backoff_seconds) as client:
        report = send_audience(
            engine, client, campaign_id=brief.campaign_id, run_id=run_id,
            template_id=brief.content.template_id, send_at=brief.send_at,
            batch_size=batch_size, fields=fields, fallbacks=fallbacks, outbox=outbox, sms=sms,
        )
        rec = reconcile(engine, client, brief.campaign_id, run_id, outbox.recipients,
                        None if sms is None else expected_segments(engine, outbox))
    details = {"report": asdict(report), "reconciliation": asdict(rec)}
    if not rec.matches:
        audit.append(engine, run_id=run_id, step="handoff", action="mismatch", actor=SYSTEM,
                     details=details)
        runs.set_status(engine, run_id, runs.FAILED)
        billing = ("" if rec.expected_segments is None else
                   f"; the ESP bills {rec.segments} SMS segments, campaignops counted {rec.expected_segments}")
        raise HandoffMismatch(
            f"handoff mismatch for run {run_id}: approved {rec.approved}, ESP accepted "
            f"{rec.accepted} and rejected {rec.rejected}{billing}"
        )
    audit.append(engine, run_id=run_id, step="handoff", action="reconciled", actor=SYSTEM,
                 details=details)
    return HttpHandoff(run_id, report, rec)
