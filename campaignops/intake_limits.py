"""The limits intake holds every brief to (documented in docs/intake.md).

A brief is a page of YAML written by a person: these bounds sit far above any
real brief and far below what could stall or exhaust the process checking it.
"""

from __future__ import annotations

import datetime as dt

MAX_BRIEF_BYTES = 256 * 1024  # file size
MAX_NESTING = 40  # YAML nesting depth (mappings and lists inside each other)
MAX_VALUES = 20_000  # every scalar, list and mapping in the document, counted once
MAX_ITEMS = 1_000  # items in one list, or keys in one mapping
MAX_TEXT = 4_000  # characters in one text value or key

MAX_RULE_DEPTH = 12  # all/any/not groups inside each other
MAX_GROUP_ITEMS = 100  # rules in one all/any group
MAX_CONDITIONS = 200  # conditions in one rule tree (include or exclude)
MAX_RULE_VALUES = 5_000  # values bound in one rule tree (in/not_in lists add up)

MIN_YEAR, MAX_YEAR = 1900, 2199  # dates and timestamps anywhere in a brief
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # any whole number in a brief

MAX_PROBLEMS_SHOWN = 50  # problems listed in one message; then "and N more"
MAX_LINE = 300  # characters in one line of a message
MAX_SOURCE = 80  # characters of the file name in a message


def within_years(value: dt.date) -> bool:
    """Whether a date or datetime (in UTC too, when it has an offset) is within the years."""
    ok = MIN_YEAR <= value.year <= MAX_YEAR
    offset = value.utcoffset() if isinstance(value, dt.datetime) else None
    if ok and offset is not None and isinstance(value, dt.datetime):
        # Within the years, so subtracting a less-than-a-day offset cannot overflow.
        ok = MIN_YEAR <= (value.replace(tzinfo=None) - offset).year <= MAX_YEAR
    return ok
