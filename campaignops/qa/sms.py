"""The SMS checks QA adds to an SMS run's audience suite: quiet hours and the longest message.

Both are computed by campaignops, not by a GX suite, and are critical:

* ``no_recipient_in_quiet_hours``: campaignops.qa.quiet_hours at the send time (policy
  ``block``: no recipient may be in quiet hours; ``defer``: they are deferred to the end of
  their window, and only an unknown country fails it).
* ``longest_message_within_max_segments``: the text with the longest value of each of its
  fields substituted (found in SQL over the run's send rows, with the brief's fallbacks),
  and with each field's longest non-ASCII value (a character outside GSM-7 makes a message
  UCS-2: 70 characters instead of 160), counted in segments against ``max_segments``.

Results hold counts, countries and segment numbers only, never a value or a number.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import PERSONALISATION_FIELDS, Brief
from campaignops.qa.quiet_hours import check_quiet_hours
from campaignops.qa.results import CheckResult, QAResult
from campaignops.schema import audience
from campaignops.sms import placeholders, render, segments

QUIET_CHECK = "no_recipient_in_quiet_hours"
SEGMENTS_CHECK = "longest_message_within_max_segments"
SOURCE = "campaignops.qa.sms"


def _bytes(engine: Engine, col: Any) -> Any:
    """The length of a text column in bytes (more than its characters: not ASCII)."""
    if engine.dialect.name == "sqlite":
        return sa.func.length(sa.cast(col, sa.LargeBinary))
    return sa.func.octet_length(col)


def longest_values(engine: Engine, run_id: str, brief: Brief) -> tuple[dict[str, str], dict[str, str]]:
    """Per field of the text: its longest value over the run's send rows (fallback applied), and
    its longest non-ASCII value (fields with none are left out); two small queries per field."""
    text = brief.content.text or ""
    longest: dict[str, str] = {}
    wide: dict[str, str] = {}
    with engine.connect() as conn:
        for name in placeholders(text):
            if name not in PERSONALISATION_FIELDS:  # whitelisted identifiers reach the SQL
                raise ValueError(f"{name!r} is not a personalisation field")
            fallback = brief.content.fallbacks.get(name)  # type: ignore[call-overload]
            col = audience.c[name]
            value = sa.func.coalesce(sa.func.nullif(sa.func.trim(col), ""), fallback) if fallback \
                else sa.func.coalesce(col, "")
            base = (sa.select(value.label("v"))
                    .where(audience.c.run_id == run_id, audience.c.outcome == "send").subquery())
            order = (sa.func.length(base.c.v).desc(), base.c.v)
            top = conn.execute(sa.select(base.c.v).order_by(*order).limit(1)).scalar()
            longest[name] = "" if top is None else str(top)
            top_wide = conn.execute(sa.select(base.c.v).where(
                _bytes(engine, base.c.v) > sa.func.length(base.c.v)).order_by(*order).limit(1)).scalar()
            if top_wide is not None:
                wide[name] = str(top_wide)
    return longest, wide


def longest_message_segments(engine: Engine, run_id: str, brief: Brief) -> int:
    """The most segments the run's message can take for its audience (0 without text)."""
    text = brief.content.text or ""
    longest, wide = longest_values(engine, run_id, brief)
    counts = [segments(render(text, longest))]
    counts += [segments(render(text, {**longest, name: v})) for name, v in wide.items()]
    return max(counts)


def sms_checks(engine: Engine, run_id: str, brief: Brief, send_at: dt.datetime) -> tuple[list[CheckResult], list[str]]:
    """The SMS checks that apply to the run, and the skipped ones with why."""
    checks: list[CheckResult] = []
    skipped: list[str] = []
    if brief.quiet_hours is None:
        skipped.append(f"{QUIET_CHECK}: the brief sets no quiet_hours")
    else:
        q = check_quiet_hours(engine, run_id, brief, send_at)
        window = f"{brief.quiet_hours.start}-{brief.quiet_hours.end} local"
        threshold = (f"0 recipients in quiet hours ({window}) at send_at" if q.policy == "block"
                     else f"recipients in quiet hours ({window}) deferred to its end; 0 of unknown country")
        checks.append(CheckResult(QUIET_CHECK, SOURCE, True, q.passed, q.line, threshold))
    most = longest_message_segments(engine, run_id, brief)
    limit = brief.segment_limit
    checks.append(CheckResult(
        SEGMENTS_CHECK, SOURCE, True, most <= limit,
        f"the longest personalised message is {most} segment{'s' if most != 1 else ''}",
        f"<= {limit} (max_segments)"))
    return checks, skipped


def add_sms_checks(engine: Engine, run_id: str, brief: Brief, send_at: dt.datetime, result: QAResult) -> QAResult:
    """The suite's result with the SMS checks added (a failing one blocks the run)."""
    checks, skipped = sms_checks(engine, run_id, brief, send_at)
    failed = [c for c in checks if not c.passed]
    return dataclasses.replace(
        result, passed=result.passed and not failed, checks=[*result.checks, *checks],
        failed_critical=[*result.failed_critical, *failed], skipped=[*result.skipped, *skipped])


def packet_lines(engine: Engine, run_id: str, brief: Brief, send_at: dt.datetime) -> tuple[str, ...]:
    """What an SMS run's approval packet says about its messages: segments, quiet hours,
    deferred send times (counts, countries and times only)."""
    if brief.channel != "sms":
        return ()
    from campaignops.handoff.sms import deferred_send_times  # the handoff package imports qa

    most = longest_message_segments(engine, run_id, brief)
    lines = [f"SMS text: {len(brief.content.text or '')} characters before personalisation; the longest "
             f"personalised message is {most} segment{'s' if most != 1 else ''} (max_segments "
             f"{brief.segment_limit})"]
    if brief.quiet_hours is None:
        lines.append("quiet hours: none set by the brief")
    else:
        lines.append(f"quiet hours: {check_quiet_hours(engine, run_id, brief, send_at).line}")
        lines += [f"deferred: recipients in {country} get it at {when}"
                  for country, when in deferred_send_times(engine, run_id, brief).items()]
    return tuple(lines)
