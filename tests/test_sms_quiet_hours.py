"""SMS quiet hours: local time from the country (every zone of it), and the QA check on a run."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from campaignops.brief import Brief, QuietHours, validate_brief
from campaignops.qa.quiet_hours import (
    check_quiet_hours,
    country_zones,
    in_window,
    is_quiet,
    quiet_end,
)
from campaignops.segmentation import segment
from campaignops.warehouse import Warehouse
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit
Q = QuietHours(start="21:00", end="08:00")


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    """An aware UTC datetime."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


def test_window_crossing_midnight_and_within_a_day() -> None:
    assert in_window(dt.datetime(2027, 1, 1, 21, 0), Q) and in_window(dt.datetime(2027, 1, 1, 7, 59), Q)
    assert not in_window(dt.datetime(2027, 1, 1, 8, 0), Q) and not in_window(dt.datetime(2027, 1, 1, 20, 59), Q)
    day = QuietHours(start="12:00", end="14:00")
    assert in_window(dt.datetime(2027, 1, 1, 13, 0), day) and not in_window(dt.datetime(2027, 1, 1, 14, 0), day)


def test_a_country_spanning_zones_is_quiet_if_any_zone_is() -> None:
    assert len(country_zones("US")) > 5 and country_zones("GB") == ("Europe/London",)
    at = utc(2027, 3, 2, 13, 30)  # 08:30 in New York, 05:30 in Los Angeles, 13:30 in London
    assert is_quiet("US", at, Q) is True and is_quiet("GB", at, Q) is False
    assert is_quiet("us", utc(2027, 3, 2, 20, 0), Q) is False  # 15:00 NY, 10:00 Honolulu
    # the US window is open in all its zones from 08:00 Honolulu (18:00 UTC) only
    assert quiet_end("US", at, Q) == utc(2027, 3, 2, 18, 0)
    assert quiet_end("GB", at, Q) == at
    assert quiet_end("GB", utc(2027, 7, 1, 22, 0), Q) == utc(2027, 7, 2, 7, 0)  # 08:00 BST


def test_unknown_country_has_no_local_time() -> None:
    assert is_quiet("XX", utc(2027, 1, 1, 12), Q) is None and is_quiet(None, utc(2027, 1, 1, 12), Q) is None
    with pytest.raises(ValueError, match="unknown country"):
        quiet_end("XX", utc(2027, 1, 1, 12), Q)


def _run(sqlite_url: str, policy: str) -> tuple[Engine, Brief]:
    rows = [customer(i, phone=f"(415) 555-{i:04d}" if c == "US" else f"020 7946 0{i:03d}",
                     sms_opt_in=True, country=c)
            for i, c in enumerate(["US", "US", "GB", "GB", "GB"], start=1)]
    rows.append(customer(6, phone="+442079460958", sms_opt_in=True, country="XX"))  # + needs no country
    engine = build_warehouse(sqlite_url, rows)
    brief = validate_brief(brief_dict(channel="sms", content={"template_id": "t", "text": "Hi"},
                                      quiet_hours={"start": "21:00", "end": "08:00"},
                                      quiet_hours_policy=policy, send_at="2027-03-02T13:30:00Z"))
    segment(Warehouse(engine), brief, "r1", AS_OF)
    return engine, brief


def test_qa_names_how_many_recipients_are_in_quiet_hours(sqlite_url: str) -> None:
    engine, brief = _run(sqlite_url, "block")
    got = check_quiet_hours(engine, "r1", brief, utc(2027, 3, 2, 13, 30))
    assert (got.recipients, got.in_quiet_hours, got.unknown_country, got.passed) == (6, 2, 1, False)
    assert got.countries_in_quiet_hours == ["US"]
    assert got.line.startswith("2 of 6 recipients would get this SMS in quiet hours (21:00-08:00 local)")
    assert "1 recipients have no known country" in got.line
    assert "415" not in got.line and "+44" not in got.line  # counts and countries only


def test_defer_policy_passes_and_counts_the_deferred(sqlite_url: str) -> None:
    engine, brief = _run(sqlite_url, "defer")
    got = check_quiet_hours(engine, "r1", brief, utc(2027, 3, 2, 13, 30))
    assert got.in_quiet_hours == 2 and got.policy == "defer"
    assert not got.passed  # the unknown country still blocks: its local time cannot be known
