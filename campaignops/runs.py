"""The run register (co_runs): one row per campaign run, its status and bindings."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import Brief
from campaignops.errors import CampaignOpsError
from campaignops.schema import audience, runs

# Status values a run moves through.
INTAKE, SEGMENTED, QA_PASSED, QA_BLOCKED = "intake", "segmented", "qa_passed", "qa_blocked"
AWAITING, APPROVED, REJECTED, EXPIRED = "awaiting_approval", "approved", "rejected", "expired"
HANDING_OFF, SENT, FAILED, COUNTED = "handing_off", "sent", "failed", "counted"


def utcnow() -> dt.datetime:
    """Now in UTC as a naive datetime (how the warehouse stores times)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def utc_naive(value: dt.datetime) -> dt.datetime:
    """A datetime as naive UTC (how the warehouse stores times); a naive one is taken as UTC."""
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def send_time(brief: Brief, now: dt.datetime | None = None) -> dt.datetime:
    """When the campaign goes out (naive UTC): send_at, or now for 'as soon as approved'."""
    if brief.send_at is not None:
        return utc_naive(brief.send_at)
    return now or utcnow()


@dataclass(frozen=True)
class RunRecord:
    """A run as the register knows it."""

    run_id: str
    campaign_id: str
    status: str
    brief: Brief
    brief_digest: str
    as_of: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    audience_digest: str | None
    recipients: int | None
    waiting_stage: str | None
    waiting_since: dt.datetime | None
    dry_run: bool
    waiting_host: str | None = None
    waiting_pid: int | None = None


def register_run(engine: Engine, run_id: str, brief: Brief, source: str, as_of: dt.datetime,
                 dry_run: bool = False) -> RunRecord:
    """Record the accepted brief for a run (idempotent for a retried intake)."""
    now = utcnow()
    brief_json = json.dumps(brief.model_dump(mode="json"), sort_keys=True)
    with engine.begin() as conn:
        existing = conn.execute(sa.select(runs.c.brief_digest).where(runs.c.run_id == run_id)).scalar()
        if existing is None:
            conn.execute(sa.insert(runs).values(
                run_id=run_id, campaign_id=brief.campaign_id, brief_digest=brief.digest(),
                brief_json=brief_json, brief_source=source, dry_run=dry_run, status=INTAKE,
                created_at=now, updated_at=now, as_of=as_of, contact_history_written=False,
            ))
        elif existing != brief.digest():
            raise CampaignOpsError(
                f"run {run_id} was started with another version of the brief: start a new run"
            )
    return get_run(engine, run_id)


def get_run(engine: Engine, run_id: str) -> RunRecord:
    """A run by id, or a clear error."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
    if r is None:
        raise CampaignOpsError(f"no run {run_id}: list runs with `campaignops approvals` or the Prefect UI")
    return _record(r)


def _record(r: Any) -> RunRecord:
    brief = Brief.model_validate(json.loads(r.brief_json))
    return RunRecord(r.run_id, r.campaign_id, r.status, brief, r.brief_digest, r.as_of, r.created_at,
                     r.updated_at, r.audience_digest, r.recipients, r.waiting_stage, r.waiting_since,
                     bool(r.dry_run), r.waiting_host, r.waiting_pid)


def set_status(engine: Engine, run_id: str, status: str, **values: Any) -> None:
    """Move a run to a status, with any other columns to set."""
    with engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(
            status=status, updated_at=utcnow(), **values))


def waiting_runs(engine: Engine) -> list[RunRecord]:
    """Runs paused for an approval, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(runs).where(runs.c.status == AWAITING).order_by(runs.c.waiting_since)
        ).all()
    return [_record(r) for r in rows]


def recent_sizes(engine: Engine, campaign_id: str, before_run: str, limit: int = 5) -> list[int]:
    """Treated-recipient counts (sends, seeds excluded) of the campaign's last sent runs."""
    with engine.connect() as conn:
        recent = conn.execute(
            sa.select(runs.c.run_id)
            .where(runs.c.campaign_id == campaign_id, runs.c.run_id != before_run,
                   runs.c.status == SENT)
            .order_by(runs.c.created_at.desc())
            .limit(limit)
        ).scalars().all()
        if not recent:
            return []
        counts: dict[str, int] = {
            str(run_id): int(n) for run_id, n in conn.execute(
                sa.select(audience.c.run_id, sa.func.count())
                .where(audience.c.run_id.in_(recent), audience.c.outcome == "send")
                .group_by(audience.c.run_id)
            )
        }
    return [int(counts.get(r, 0)) for r in recent]


def get_batch_size(engine: Engine, run_id: str) -> int | None:
    """The batch size the run's first handoff attempt used, if any."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(runs.c.batch_size).where(runs.c.run_id == run_id)).scalar()
    return int(value) if value is not None else None


FINAL = frozenset({SENT, COUNTED, REJECTED, EXPIRED, QA_BLOCKED, FAILED})
SYSTEM = "campaignops"


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(status, why) of a run this error stopped, decided by type; no personal data in why.

    A campaignops error's first line says what happened; any other error is a bug or an
    outage whose text may quote row values, so only its type is kept (the log has more).
    """
    from campaignops.errors import ApprovalExpired, ApprovalRejected, BriefError, QAFailed

    if isinstance(exc, ApprovalExpired):
        status = EXPIRED
    elif isinstance(exc, ApprovalRejected | BriefError):
        status = REJECTED
    elif isinstance(exc, QAFailed):
        status = QA_BLOCKED
    else:
        status = FAILED
    if isinstance(exc, CampaignOpsError):
        lines = str(exc).splitlines()
        return status, (lines[0] if lines else type(exc).__name__)
    return status, f"{type(exc).__name__} (see the run's log)"


def close_dry_run(engine: Engine, run_id: str) -> None:
    """Close a run that only counted (or only checked): status counted, audited."""
    from campaignops import audit

    set_status(engine, run_id, COUNTED)
    audit.append(engine, run_id=run_id, step="run", action="counted", actor=SYSTEM, details={})


def record_failure(engine: Engine, run_id: str, status: str, why: str) -> str | None:
    """Record that a run ended without sending; the status it ends in (None: never registered).

    The step that ended the run may already have set a final status and audited why (a
    rejection, an expiry, a QA block); otherwise the run moves to ``status`` (never left
    waiting or in progress) and a ``run failed`` record says why, without personal data.
    """
    from campaignops import audit

    with engine.connect() as conn:
        current = conn.execute(sa.select(runs.c.status).where(runs.c.run_id == run_id)).scalar()
    if current in FINAL and current != FAILED:
        return str(current)
    if current is not None:
        set_status(engine, run_id, status, waiting_stage=None)
    audit.append(engine, run_id=run_id, step="run", action="failed", actor=SYSTEM,
                 details={"why": why[:500], "status": status if current is not None else None})
    return status if current is not None else None
