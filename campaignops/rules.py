"""The brief's audience rule language: parsing, type checks and SQL compilation.

A rule is a condition ``{field, op, value}`` or a group ``{all: [...]}``,
``{any: [...]}``, ``{not: rule}``. A comparison on a missing (null) value is
false, and ``not`` turns false into true, so ``not within_days`` includes
people who never opened. Values are always bound parameters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from campaignops.schema import customers

LIFECYCLE_STAGES = (
    "suspect", "prospect", "lead", "mql", "sql", "opportunity", "customer", "churned",
)
LOYALTY_TIERS = ("none", "bronze", "silver", "gold", "platinum", "staff")

# field -> (kind, allowed values or None)
FIELDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "customer_id": ("int", None),
    "email": ("str", None),
    "phone": ("str", None),
    "first_name": ("str", None),
    "last_name": ("str", None),
    "country": ("str", None),
    "region": ("str", None),
    "language": ("str", None),
    "signup_date": ("date", None),
    "lifecycle_stage": ("str", LIFECYCLE_STAGES),
    "lead_score": ("int", None),
    "loyalty_tier": ("str", LOYALTY_TIERS),
    "lifetime_value": ("number", None),
    "last_purchase_at": ("datetime", None),
    "last_open_at": ("datetime", None),
    "household_id": ("int", None),
    "email_opt_in": ("bool", None),
    "sms_opt_in": ("bool", None),
}

SCALAR_OPS = ("eq", "ne")
LIST_OPS = ("in", "not_in")
ORDER_OPS = ("gt", "gte", "lt", "lte")
NULL_OPS = ("is_null", "not_null")
DAY_OPS = ("within_days", "older_than_days")
OPERATORS = (*SCALAR_OPS, *LIST_OPS, *ORDER_OPS, "between", *NULL_OPS, *DAY_OPS)
ORDERED_KINDS = ("int", "number", "date", "datetime", "str")
TIME_KINDS = ("date", "datetime")
MAX_DEPTH = 12


@dataclass(frozen=True)
class Cond:
    """One comparison of a customer field with a bound value."""

    field: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class AllOf:
    """True when every item is true (an empty list is true)."""

    items: tuple[Rule, ...]


@dataclass(frozen=True)
class AnyOf:
    """True when at least one item is true (an empty list is false)."""

    items: tuple[Rule, ...]


@dataclass(frozen=True)
class Not:
    """True when the item is false (a null comparison counts as false)."""

    item: Rule


Rule = Union[Cond, AllOf, AnyOf, Not]  # noqa: UP007 - used at runtime


class RuleProblems(Exception):
    """Every problem found in a rule tree, each naming its path and fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _coerce(kind: str, value: Any, where: str, problems: list[str]) -> Any:
    """The value as the field's type, or a problem naming the expected type."""
    ok: Any = None
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            ok = value
    elif kind == "number":
        if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
            ok = Decimal(str(value))
    elif kind == "bool":
        if isinstance(value, bool):
            ok = value
    elif kind == "str":
        if isinstance(value, str):
            ok = value
    elif kind == "date":
        if isinstance(value, dt.datetime):
            ok = value.date()
        elif isinstance(value, dt.date):
            ok = value
        elif isinstance(value, str):
            try:
                ok = dt.date.fromisoformat(value)
            except ValueError:
                ok = None
    elif kind == "datetime":
        if isinstance(value, dt.datetime):
            ok = value
        elif isinstance(value, dt.date):
            ok = dt.datetime.combine(value, dt.time())
        elif isinstance(value, str):
            try:
                ok = dt.datetime.fromisoformat(value)
            except ValueError:
                ok = None
        if ok is not None and ok.tzinfo is not None:
            ok = ok.astimezone(dt.UTC).replace(tzinfo=None)
    if ok is None:
        expected = {
            "int": "a whole number",
            "number": "a number",
            "bool": "true or false",
            "str": "a text value",
            "date": "a date like 2026-01-31",
            "datetime": "a timestamp like 2026-01-31T09:00:00Z",
        }[kind]
        problems.append(f"{where}: {value!r} is not {expected}")
    return ok


def _check_enum(field: str, value: Any, where: str, problems: list[str]) -> None:
    allowed = FIELDS[field][1]
    if allowed and isinstance(value, str) and value not in allowed:
        problems.append(f"{where}: {value!r} is not a {field}; use one of {', '.join(allowed)}")


def _parse_cond(raw: dict[str, Any], path: str, problems: list[str]) -> Cond | None:
    unknown = sorted(set(raw) - {"field", "op", "value"})
    if unknown:
        problems.append(f"{path}: unknown key {', '.join(unknown)}; a condition has field, op, value")
    field, op = raw.get("field"), raw.get("op")
    before = len(problems)
    if field not in FIELDS:
        problems.append(
            f"{path}.field: unknown audience field {field!r}; use one of {', '.join(FIELDS)}"
        )
    if op not in OPERATORS:
        problems.append(f"{path}.op: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    if len(problems) > before or not isinstance(field, str) or not isinstance(op, str):
        return None
    kind = FIELDS[field][0]
    where = f"{path}.value"
    has_value = "value" in raw
    value = raw.get("value")
    if op in NULL_OPS:
        if has_value and value is not None:
            problems.append(f"{where}: {op} takes no value; remove it")
            return None
        return Cond(field, op)
    if not has_value or value is None:
        problems.append(f"{where}: {op} needs a value (use is_null to match missing values)")
        return None
    if op in SCALAR_OPS:
        v = _coerce(kind, value, where, problems)
        _check_enum(field, value, where, problems)
        return Cond(field, op, v) if len(problems) == before else None
    if op in LIST_OPS:
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: {op} needs a non-empty list of values")
            return None
        items = []
        for i, item in enumerate(value):
            items.append(_coerce(kind, item, f"{where}[{i}]", problems))
            _check_enum(field, item, f"{where}[{i}]", problems)
        return Cond(field, op, tuple(items)) if len(problems) == before else None
    if op in ORDER_OPS:
        if kind not in ORDERED_KINDS:
            problems.append(f"{path}.op: {op} does not apply to {field} ({kind}); use eq or ne")
            return None
        v = _coerce(kind, value, where, problems)
        return Cond(field, op, v) if len(problems) == before else None
    if op == "between":
        if kind not in ORDERED_KINDS:
            problems.append(f"{path}.op: between does not apply to {field} ({kind})")
            return None
        if not isinstance(value, list) or len(value) != 2:
            problems.append(f"{where}: between needs [low, high]")
            return None
        lo = _coerce(kind, value[0], f"{where}[0]", problems)
        hi = _coerce(kind, value[1], f"{where}[1]", problems)
        if len(problems) > before:
            return None
        if lo > hi:
            problems.append(f"{where}: between bounds are reversed ({value[0]!r} > {value[1]!r}); write [low, high]")
            return None
        return Cond(field, op, (lo, hi))
    # within_days / older_than_days
    if kind not in TIME_KINDS:
        problems.append(f"{path}.op: {op} needs a date or timestamp field, not {field} ({kind})")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 36500:
        problems.append(f"{where}: {op} needs a whole number of days between 0 and 36500")
        return None
    return Cond(field, op, value)


def parse_rule(raw: Any, path: str = "rule", depth: int = 0) -> Rule:
    """A rule tree from its YAML form, or RuleProblems listing every problem."""
    problems: list[str] = []
    rule = _parse(raw, path, depth, problems)
    if problems or rule is None:
        raise RuleProblems(problems or [f"{path}: empty rule"])
    return rule


def _parse(raw: Any, path: str, depth: int, problems: list[str]) -> Rule | None:
    if depth > MAX_DEPTH:
        problems.append(f"{path}: rules nest deeper than {MAX_DEPTH} levels; flatten them")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a condition or all/any/not group, got {type(raw).__name__}")
        return None
    groups = [k for k in ("all", "any", "not") if k in raw]
    if not groups:
        if "field" in raw or "op" in raw:
            return _parse_cond(raw, path, problems)
        problems.append(
            f"{path}: unknown key {', '.join(sorted(map(str, raw))) or '(none)'}; "
            "use all, any, not or a {field, op, value} condition"
        )
        return None
    if len(raw) != 1:
        problems.append(f"{path}: a group has exactly one key (all, any or not); split {sorted(map(str, raw))}")
        return None
    key = groups[0]
    body = raw[key]
    if key == "not":
        inner = _parse(body, f"{path}.not", depth + 1, problems)
        return Not(inner) if inner is not None else None
    if not isinstance(body, list) or not body:
        problems.append(f"{path}.{key}: needs a non-empty list of rules")
        return None
    items = [_parse(item, f"{path}.{key}[{i}]", depth + 1, problems) for i, item in enumerate(body)]
    if any(i is None for i in items):
        return None
    clean = tuple(i for i in items if i is not None)
    return AllOf(clean) if key == "all" else AnyOf(clean)


def compile_rule(rule: Rule, as_of: dt.datetime, table: sa.Table = customers) -> ColumnElement[bool]:
    """The rule as a SQL boolean that is never null (null comparisons are false)."""
    if isinstance(rule, AllOf):
        return sa.and_(*(compile_rule(i, as_of, table) for i in rule.items))
    if isinstance(rule, AnyOf):
        return sa.or_(*(compile_rule(i, as_of, table) for i in rule.items))
    if isinstance(rule, Not):
        return sa.not_(compile_rule(rule.item, as_of, table))
    col = table.c[rule.field]
    if rule.op == "is_null":
        return col.is_(None)
    if rule.op == "not_null":
        return col.is_not(None)
    cmp: ColumnElement[bool]
    kind = FIELDS[rule.field][0]
    if rule.op in DAY_OPS:
        cutoff: dt.date | dt.datetime = as_of - dt.timedelta(days=int(rule.value))
        if kind == "date":
            cutoff = cutoff.date() if isinstance(cutoff, dt.datetime) else cutoff
        cmp = col >= cutoff if rule.op == "within_days" else col < cutoff
    elif rule.op == "between":
        cmp = col.between(rule.value[0], rule.value[1])
    elif rule.op == "in":
        cmp = col.in_(list(rule.value))
    elif rule.op == "not_in":
        cmp = col.not_in(list(rule.value))
    else:
        ops: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
            "eq": lambda c, v: c == v,
            "ne": lambda c, v: c != v,
            "gt": lambda c, v: c > v,
            "gte": lambda c, v: c >= v,
            "lt": lambda c, v: c < v,
            "lte": lambda c, v: c <= v,
        }
        cmp = ops[rule.op](col, rule.value)
    # Null is false, never unknown: so `not` of a null comparison is true.
    return sa.and_(col.is_not(None), cmp)


def evaluate(rule: Rule, row: dict[str, Any], as_of: dt.datetime) -> bool:
    """The same rule evaluated in Python on one row (the reference for tests)."""
    if isinstance(rule, AllOf):
        return all(evaluate(i, row, as_of) for i in rule.items)
    if isinstance(rule, AnyOf):
        return any(evaluate(i, row, as_of) for i in rule.items)
    if isinstance(rule, Not):
        return not evaluate(rule.item, row, as_of)
    v = row.get(rule.field)
    if rule.op == "is_null":
        return v is None
    if rule.op == "not_null":
        return v is not None
    if v is None:
        return False
    kind = FIELDS[rule.field][0]
    if rule.op in DAY_OPS:
        cutoff: Any = as_of - dt.timedelta(days=int(rule.value))
        if kind == "date":
            cutoff = cutoff.date()
        return bool(v >= cutoff) if rule.op == "within_days" else bool(v < cutoff)
    x = rule.value
    checks: dict[str, Callable[[], bool]] = {
        "eq": lambda: v == x,
        "ne": lambda: v != x,
        "gt": lambda: v > x,
        "gte": lambda: v >= x,
        "lt": lambda: v < x,
        "lte": lambda: v <= x,
        "between": lambda: x[0] <= v <= x[1],
        "in": lambda: v in x,
        "not_in": lambda: v not in x,
    }
    return checks[rule.op]()


def fields_used(rule: Rule) -> Sequence[str]:
    """Every field a rule reads, in order of appearance."""
    if isinstance(rule, Cond):
        return [rule.field]
    if isinstance(rule, Not):
        return fields_used(rule.item)
    return [f for i in rule.items for f in fields_used(i)]


RULE_JSON_SCHEMA: dict[str, Any] = {
    "$id": "#rule",
    "description": "A condition {field, op, value} or a group {all|any: [rules]} / {not: rule}.",
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["field", "op"],
            "properties": {
                "field": {"enum": list(FIELDS)},
                "op": {"enum": list(OPERATORS)},
                "value": {},
            },
        },
        {"type": "object", "additionalProperties": False, "required": ["all"],
         "properties": {"all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Rule"}}}},
        {"type": "object", "additionalProperties": False, "required": ["any"],
         "properties": {"any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Rule"}}}},
        {"type": "object", "additionalProperties": False, "required": ["not"],
         "properties": {"not": {"$ref": "#/$defs/Rule"}}},
    ],
}
