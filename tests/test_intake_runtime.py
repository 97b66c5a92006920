"""What intake accepts runs: the largest rules and the edge values, on SQLite and PostgreSQL.

Issue 12 found briefs that passed intake and then failed in the warehouse (NaN,
64-bit overflow, a lone surrogate, an `any:` of 1,000 conditions past SQLite's
expression depth). Intake now refuses those; these tests prove that everything
it still accepts, up to each limit, runs on both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from campaignops import intake_limits as lim
from campaignops.brief import validate_brief
from campaignops.errors import BriefError
from campaignops.segmentation import count_floor, segment
from campaignops.warehouse import Warehouse
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit


def eq(cid: int) -> dict[str, Any]:
    """One condition: customer_id eq cid."""
    return {"field": "customer_id", "op": "eq", "value": cid}


def deepest(levels: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """A rule nesting `levels` one-item groups (all and any, alternately) around a leaf."""
    rule = leaf
    for i in range(levels):
        rule = {"any" if i % 2 else "all": [rule]}
    return rule


def widest() -> dict[str, Any]:
    """Every limit at once: 200 conditions, groups of 100, 12 levels deep."""
    first = {"any": [eq(i) for i in range(1, lim.MAX_GROUP_ITEMS + 1)]}
    second = {"any": [eq(i) for i in range(1, lim.MAX_GROUP_ITEMS - lim.MAX_RULE_DEPTH + 1)]}
    deep = deepest(lim.MAX_RULE_DEPTH - 1, eq(2))  # its leaf sits 12 levels down
    return {"all": [first, second, *([deep] * lim.MAX_RULE_DEPTH)]}


def count_conditions(rule: Any) -> int:
    """How many conditions a rule holds."""
    if isinstance(rule, dict) and "field" in rule:
        return 1
    if isinstance(rule, dict):
        body = next(iter(rule.values()))
        return sum(count_conditions(r) for r in (body if isinstance(body, list) else [body]))
    return 0


def many_values() -> dict[str, Any]:
    """5,000 bound values: five lists of 1,000 customer ids."""
    lists = [{"field": "customer_id", "op": "in", "value": list(range(k * 1000 + 1, k * 1000 + 1001))}
             for k in range(lim.MAX_RULE_VALUES // lim.MAX_ITEMS)]
    return {"any": lists}


def test_the_largest_rules_intake_accepts_run(db_url: str) -> None:
    engine = build_warehouse(db_url, [customer(i) for i in range(1, 6)])
    rule = widest()
    assert count_conditions(rule) == lim.MAX_CONDITIONS
    brief = validate_brief(brief_dict(audience={"include": rule, "exclude": many_values()}))
    assert segment(Warehouse(engine), brief, "wide", AS_OF).recipients == 0  # 2 is matched, then excluded
    brief = validate_brief(brief_dict(audience={"include": many_values(), "exclude": rule}))
    assert count_floor(engine, brief, AS_OF) == 4  # everyone but customer 2
    assert segment(Warehouse(engine), brief, "values", AS_OF).recipients == 4


def test_edge_values_intake_accepts_run(db_url: str) -> None:
    engine = build_warehouse(db_url, [customer(1), customer(2, lifetime_value=None)])
    rule = {"all": [
        {"field": "customer_id", "op": "not_in", "value": [lim.INT64_MAX, lim.INT64_MIN]},
        {"field": "household_id", "op": "lt", "value": lim.INT64_MAX},
        {"field": "lifetime_value", "op": "between", "value": [-9_999_999_999.99, 9_999_999_999.99]},
        {"field": "lead_score", "op": "between", "value": [0, 100]},
        {"field": "signup_date", "op": "between", "value": ["1900-01-01", dt.date(2199, 12, 31)]},
        {"field": "last_open_at", "op": "lt", "value": "2199-12-31T23:00:00-00:30"},
        {"field": "last_open_at", "op": "gt", "value": dt.datetime(1900, 1, 1, 0, 30, tzinfo=dt.UTC)},
        {"field": "region", "op": "ne", "value": "Île-de-France ☃ \u202e"},
        {"field": "country", "op": "in", "value": ["US", "DE"]},
        {"field": "language", "op": "in", "value": ["en", "pt-BR"]},
    ]}
    brief = validate_brief(brief_dict(audience={"include": rule}))
    assert count_floor(engine, brief, AS_OF) == 1
    assert segment(Warehouse(engine), brief, "edges", AS_OF).recipients == 1


@pytest.mark.parametrize("rule, problem", [
    ({"any": [eq(i) for i in range(lim.MAX_GROUP_ITEMS + 1)]},
     "audience.include.any: 101 rules in one group; at most 100 (nest groups, or use in for a list of values)"),
    ({"all": [{"any": [eq(i) for i in range(100)]}, {"any": [eq(i) for i in range(100)]}, eq(0)]},
     "audience.include: 201 conditions; at most 200 in one rule (use in for a list of values)"),
    (deepest(lim.MAX_RULE_DEPTH + 1, eq(1)),
     "audience.include" + ".all[0].any[0]" * 6 + ".all[0]: rules nest deeper than 12 levels; flatten them"),
    ({"any": [*many_values()["any"], {"field": "customer_id", "op": "in", "value": [0]}]},
     "audience.include: 5,001 values; at most 5,000 in one rule"),
])
def test_one_past_each_rule_limit_is_refused(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(BriefError) as info:
        validate_brief(brief_dict(audience={"include": rule}))
    assert info.value.problems == [problem]


def test_the_run_time_failures_of_issue_12_are_intake_errors() -> None:
    cases = [
        ({"field": "lifetime_value", "op": "ne", "value": float("nan")},
         "audience.include.value: .nan is not a number; write a finite number"),
        ({"field": "customer_id", "op": "in", "value": [1, 2**63]},
         "audience.include.value[1]: 9223372036854775808 is beyond the 64-bit integer range; "
         "use a smaller number"),
        ({"field": "region", "op": "eq", "value": "\ud800"},
         "audience.include.value: text has a lone surrogate \\ud800, which cannot be stored; remove it"),
        ({"any": [eq(i) for i in range(1000)]},
         "audience.include: 1,000 conditions; at most 200 in one rule (use in for a list of values)"),
    ]
    for rule, problem in cases:
        with pytest.raises(BriefError) as info:
            validate_brief(brief_dict(audience={"include": rule}))
        assert problem in info.value.problems
