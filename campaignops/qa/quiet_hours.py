"""SMS quiet hours: the recipient's local time from their country, and the QA check on a run.

A country's zones come from pytz's country_timezones (the IANA zone.tab, a maintained
table), local times from zoneinfo. A country spanning several zones is quiet when any of
its zones is: the window that may be sent in is the one open in all of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import Brief, QuietHours
from campaignops.schema import audience


@lru_cache(maxsize=512)
def country_zones(country: str | None) -> tuple[str, ...]:
    """The IANA zones of an ISO 3166 country (empty if the country is unknown)."""
    import pytz

    if not country or not country.strip():
        return ()
    try:
        return tuple(pytz.country_timezones[country.strip().upper()])
    except KeyError:
        return ()


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def in_window(local: dt.datetime, quiet: QuietHours) -> bool:
    """Whether a local time falls in the quiet window [start, end) (which may cross midnight)."""
    t, start, end = local.hour * 60 + local.minute, _minutes(quiet.start), _minutes(quiet.end)
    return start <= t < end if start < end else (t >= start or t < end)


def is_quiet(country: str | None, at: dt.datetime, quiet: QuietHours) -> bool | None:
    """Whether `at` (aware) is in quiet hours anywhere in the country; None if the country is unknown."""
    zones = country_zones(country)
    if not zones:
        return None
    return any(in_window(at.astimezone(ZoneInfo(z)), quiet) for z in zones)


def quiet_end(country: str, at: dt.datetime, quiet: QuietHours) -> dt.datetime:
    """The first time at or after `at` (aware, UTC) that is outside quiet hours in all the country's zones."""
    zones = country_zones(country)
    if not zones:
        raise ValueError(f"unknown country {country!r}: no time zone for it")
    end_h, end_m = (int(x) for x in quiet.end.split(":"))
    t = at.astimezone(dt.UTC)
    for _ in range(len(zones) + 2):
        quiet_in = [z for z in zones if in_window(t.astimezone(ZoneInfo(z)), quiet)]
        if not quiet_in:
            return t
        ends = []
        for z in quiet_in:
            local = t.astimezone(ZoneInfo(z))
            end = local.replace(hour=end_h, minute=end_m, second=0, microsecond=0)
            if end <= local:
                end += dt.timedelta(days=1)
            ends.append(end.astimezone(dt.UTC))
        t = max(ends)
    return t


@dataclass
class QuietHoursCheck:
    """How many of a run's SMS recipients the send time reaches in their quiet hours (counts only)."""

    run_id: str
    send_at: str
    policy: str
    recipients: int
    in_quiet_hours: int
    unknown_country: int
    countries_in_quiet_hours: list[str]
    passed: bool
    line: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


def check_quiet_hours(engine: Engine, run_id: str, brief: Brief, send_at: dt.datetime) -> QuietHoursCheck:
    """The QA check: recipients counted per country in the warehouse, each country judged once.

    Policy block: any recipient in quiet hours (or in a country with no known time zone)
    fails the check, naming how many. Policy defer: they are counted as deferred to the
    end of their window (the SMS handoff that applies it is not built yet: docs/sms.md).
    """
    at = send_at if send_at.tzinfo else send_at.replace(tzinfo=dt.UTC)
    q = (sa.select(audience.c.country, sa.func.count())
         .where(audience.c.run_id == run_id, audience.c.outcome == "send")
         .group_by(audience.c.country))
    with engine.connect() as conn:
        per_country = conn.execute(q).all()
    total = sum(int(n) for _, n in per_country)
    quiet = unknown = 0
    named: list[str] = []
    if brief.quiet_hours is not None:
        for country, n in per_country:
            verdict = is_quiet(country, at, brief.quiet_hours)
            if verdict is None:
                unknown += int(n)
            elif verdict:
                quiet += int(n)
                named.append(str(country))
    window = f"{brief.quiet_hours.start}-{brief.quiet_hours.end}" if brief.quiet_hours else "none"
    if brief.quiet_policy == "defer":
        passed = unknown == 0
        line = (f"{quiet:,} of {total:,} recipients are in quiet hours ({window} local) at "
                f"{at.isoformat()}: deferred to the end of their window")
    else:
        passed = quiet == 0 and unknown == 0
        line = (f"{quiet:,} of {total:,} recipients would get this SMS in quiet hours ({window} local) at "
                f"{at.isoformat()}" + (f" (countries: {', '.join(sorted(named))})" if named else "")
                + ("; move send_at or set quiet_hours_policy: defer" if quiet else ""))
    if unknown:
        line += (f"; {unknown:,} recipients have no known country, so their local time is unknown: "
                 "fix their country or exclude them")
    return QuietHoursCheck(run_id, at.isoformat(), brief.quiet_policy, total, quiet, unknown,
                           sorted(named), passed, line)
