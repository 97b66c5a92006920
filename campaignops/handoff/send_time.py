"""When a handoff may start: a send time in the past by more than the grace is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from campaignops.errors import HandoffRefused


def iso_z(value: datetime | None) -> str | None:
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


def stale_send_time(send_at: datetime | None, now: datetime, grace: timedelta) -> tuple[str, str] | None:
    """(what is wrong, the fix) when ``send_at`` is past by more than ``grace``, else None.

    ``None`` means "send as soon as approved" and always passes; a future ``send_at``
    passes and travels in every batch, so the ESP holds the send until then. Naive
    datetimes are taken as UTC. A negative grace is a setting's error (HandoffRefused).
    """
    if grace < timedelta(0):
        raise HandoffRefused(
            f"send grace {grace} is negative: set CAMPAIGNOPS_SEND_GRACE_MINUTES to 0 or more"
        )
    if send_at is None:
        return None
    late = _utc_aware(now) - _utc_aware(send_at)
    if late <= grace:
        return None
    return (f"send_at {iso_z(send_at)} passed {_span(late)} ago, more than the {_span(grace)} grace",
            "set a future send_at (or null) in the brief and start a new run, or raise "
            "CAMPAIGNOPS_SEND_GRACE_MINUTES")


def check_send_time(send_at: datetime | None, now: datetime, grace: timedelta) -> None:
    """Refuse to hand off a campaign whose ``send_at`` is past by more than ``grace``
    (:class:`HandoffRefused`, one line naming send_at and the fix)."""
    stale = stale_send_time(send_at, now, grace)
    if stale is not None:
        what, fix = stale
        raise HandoffRefused(f"{what}: nothing was sent; {fix}")
