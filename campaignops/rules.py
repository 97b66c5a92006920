"""The brief's audience rule language: parsing, type checks and SQL compilation.

A rule is a condition ``{field, op, value}`` or a group ``{all: [...]}``,
``{any: [...]}``, ``{not: rule}``. A comparison on a missing (null) value is
false, and ``not`` turns false into true, so ``not within_days`` includes
people who never opened. Values are always bound parameters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from campaignops import domains
from campaignops.domains import LIFECYCLE_STAGES, LOYALTY_TIERS, did_you_mean, nearest
from campaignops.intake_limits import (
    MAX_CONDITIONS,
    MAX_GROUP_ITEMS,
    MAX_RULE_DEPTH,
    MAX_RULE_VALUES,
    MAX_YEAR,
    MIN_YEAR,
    within_years,
)
from campaignops.schema import customers, lifecycle_scores
from campaignops.textsafe import clip, show

__all__ = ["LIFECYCLE_STAGES", "LOYALTY_TIERS"]

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
    # From the last lifecycle scoring (co_lifecycle_scores, docs/lifecycle.md); null if never scored.
    "scored_stage": ("str", LIFECYCLE_STAGES),
    "lifecycle_score": ("number", None),
    "stage_entered_at": ("datetime", None),
}
# Rule fields read from campaignops' lifecycle scores rather than the customers table.
LIFECYCLE_FIELDS = {"scored_stage": "stage", "lifecycle_score": "score", "stage_entered_at": "stage_entered_at"}
# Text fields holding codes from a standard: checked at intake, never ordered.
CODE_FIELDS: dict[str, Callable[[str, bool], str | None]] = {
    "country": domains.country_problem,
    "language": domains.language_problem,
}
# Whole-number fields whose data model says more than their column type does.
INT_DOMAINS: dict[str, tuple[int, int]] = {"lead_score": domains.LEAD_SCORE}

SCALAR_OPS = ("eq", "ne")
LIST_OPS = ("in", "not_in")
ORDER_OPS = ("gt", "gte", "lt", "lte")
NULL_OPS = ("is_null", "not_null")
DAY_OPS = ("within_days", "older_than_days")
OPERATORS = (*SCALAR_OPS, *LIST_OPS, *ORDER_OPS, "between", *NULL_OPS, *DAY_OPS)
ORDERED_KINDS = ("int", "number", "date", "datetime", "str")
TIME_KINDS = ("date", "datetime")
MAX_DEPTH = MAX_RULE_DEPTH
MAX_DAYS = 36500
# What people type for an operator, pointed at the one they mean.
_OP_ALIASES = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", ">": "gt", ">=": "gte",
               "<": "lt", "<=": "lte", "not in": "not_in", "nin": "not_in", "null": "is_null",
               "is null": "is_null", "not null": "not_null", "is_not_null": "not_null",
               "equals": "eq", "greater": "gt", "greater_than": "gt", "less": "lt",
               "less_than": "lt", "not_equal": "ne", "not_equals": "ne"}
_EXPECTED = {
    "int": "a whole number",
    "number": "a number",
    "bool": "true or false",
    "str": "a text value",
    "date": "a date like 2026-01-31",
    "datetime": "a timestamp like 2026-01-31T09:00:00Z",
}


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


@dataclass
class _Check:
    """What one parse collects: problems, and the counts the limits apply to."""

    intake: bool
    problems: list[str] = field(default_factory=list)
    conditions: int = 0
    values: int = 0
    suggestions: int = 50  # nearest-value look-ups left (each costs a scan of a code list)

    def suggest(self) -> bool:
        """Whether this problem still gets a did-you-mean."""
        self.suggestions -= 1
        return self.suggestions >= 0


def _column(name: str) -> sa.Column[Any]:
    """The column a rule field reads (customers, or the lifecycle scores)."""
    if name in LIFECYCLE_FIELDS:
        return lifecycle_scores.c[LIFECYCLE_FIELDS[name]]
    return customers.c[name]


def _int_range(name: str) -> tuple[int, int]:
    """The range of a whole-number column (BigInteger or Integer)."""
    bits = 64 if isinstance(_column(name).type, sa.BigInteger) else 32
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _number_bound(name: str) -> Decimal:
    """The first magnitude a Numeric(p, s) column cannot hold."""
    t = _column(name).type
    precision, scale = getattr(t, "precision", None) or 18, getattr(t, "scale", None) or 0
    return Decimal(10) ** (precision - scale)


def _coerce(name: str, value: Any, where: str, check: _Check) -> Any:
    """The value as the field's type, or None with a problem naming the expected type."""
    kind = FIELDS[name][0]
    ok: Any = None
    why = ""
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = _int_range(name)
            if lo <= value <= hi:
                ok = value
            else:
                why = f"beyond the range of {name}'s column ({lo:,} to {hi:,})"
    elif kind == "number":
        if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
            number = Decimal(str(value)) if not isinstance(value, int) else Decimal(value)
            bound = _number_bound(name)
            if not number.is_finite():
                why = "not a finite number"
            elif abs(number) >= bound:
                why = f"beyond the range of {name}'s column (less than {bound:,} either way)"
            else:
                ok = number
    elif kind == "bool":
        if isinstance(value, bool):
            ok = value
    elif kind == "str":
        if isinstance(value, str):
            ok = value
        elif isinstance(value, bool):
            why = ("read as true/false by YAML (unquoted yes, no, on, off); "
                   "quote it to compare with text, e.g. 'NO'")
    elif kind in TIME_KINDS:
        ok, why = _coerce_time(kind, value)
    if ok is None:
        check.problems.append(f"{where}: {show(value)} is {why or 'not ' + _EXPECTED[kind]}")
    return ok


def _coerce_time(kind: str, value: Any) -> tuple[Any, str]:
    """A date, or a naive UTC datetime, from a date, datetime or ISO text within the years."""
    parsed: dt.date | None = None
    if isinstance(value, dt.date):
        parsed = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            parsed = (dt.date.fromisoformat(value) if kind == "date"
                      else dt.datetime.fromisoformat(value))
        except ValueError:
            parsed = None
    if parsed is None:
        return None, ""
    if not within_years(parsed):
        return None, f"outside the years {MIN_YEAR}-{MAX_YEAR}"
    if kind == "date":
        return (parsed.date() if isinstance(parsed, dt.datetime) else parsed), ""
    moment = parsed if isinstance(parsed, dt.datetime) else dt.datetime.combine(parsed, dt.time())
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment, ""


def _domain(name: str, value: Any, where: str, check: _Check) -> None:
    """At intake: the value belongs to the field's domain in the data model."""
    if not check.intake or value is None:
        return
    problem = None
    allowed = FIELDS[name][1]
    if allowed and isinstance(value, str):
        if value not in allowed:
            problem = domains.enum_problem(name, value, allowed, check.suggest())
    elif name in CODE_FIELDS and isinstance(value, str):
        problem = CODE_FIELDS[name](value, False)
        if problem is not None and check.suggest():
            problem = CODE_FIELDS[name](value, True)
    elif name in INT_DOMAINS and isinstance(value, int):
        lo, hi = INT_DOMAINS[name]
        if not lo <= value <= hi:
            problem = f"{show(value)} is outside {name}'s range {lo}-{hi} in the data model"
    elif FIELDS[name][0] == "str" and isinstance(value, str):
        length = getattr(_column(name).type, "length", None)
        if length is not None and len(value) > length:
            problem = (f"{show(value)} is {len(value):,} characters, longer than {name} can be "
                       f"({length}); it could never match")
    if problem is not None:
        check.problems.append(f"{where}: {problem}")


def _values(name: str | None, items: list[tuple[Any, str]], check: _Check) -> list[Any]:
    """Each value coerced to the field's type and checked against its domain."""
    out: list[Any] = []
    for value, where in items:
        check.values += 1
        if name is None:
            out.append(None)
            continue
        v = _coerce(name, value, where, check)
        _domain(name, v if FIELDS[name][0] != "str" else value, where, check)
        out.append(v)
    return out


def _order_refusal(name: str, op: str, value: Any) -> str | None:
    """At intake: why an ordering operator cannot apply to a category or code field."""
    allowed = FIELDS[name][1]
    if allowed:
        example = _ordered_slice(allowed, op, value)
        hint = f", e.g. in [{', '.join(example)}]" if example else " with in"
        return (f"{op} does not apply to {name}: its values are categories, and {op} would compare "
                f"their spelling; list the ones you mean{hint}")
    if name in CODE_FIELDS:
        return f"{op} does not apply to {name}: codes have no order; use in or not_in with the codes you mean"
    return None


def _ordered_slice(allowed: tuple[str, ...], op: str, value: Any) -> list[str]:
    """The values an ordering would mean in the data model's order (for a suggestion)."""
    bounds = value if op == "between" and isinstance(value, list) else [value]
    if not bounds or not all(isinstance(b, str) and b in allowed for b in bounds):
        return []
    i = allowed.index(bounds[0])
    if op == "between":
        j = allowed.index(bounds[-1])
        return list(allowed[min(i, j):max(i, j) + 1])
    return {"gt": list(allowed[i + 1:]), "gte": list(allowed[i:]),
            "lt": list(allowed[:i]), "lte": list(allowed[:i + 1])}[op]


def _parse_cond(raw: dict[Any, Any], path: str, check: _Check) -> Cond | None:
    problems = check.problems
    before = len(problems)
    check.conditions += 1
    unknown = [k for k in raw if k not in ("field", "op", "value")]
    if unknown:
        names = ", ".join(clip(k, 40) if isinstance(k, str) else show(k) for k in unknown[:5])
        guess = nearest(unknown[0], ("field", "op", "value")) if isinstance(unknown[0], str) else None
        problems.append(f"{path}: unknown key {names}{did_you_mean(guess)}; "
                        "a condition has field, op, value")
    name, op = raw.get("field"), raw.get("op")
    if not (isinstance(name, str) and name in FIELDS):
        guess = nearest(name, FIELDS) if isinstance(name, str) else None
        problems.append(f"{path}.field: unknown audience field {show(name)}"
                        + (did_you_mean(guess) if guess else f"; use one of {', '.join(FIELDS)}"))
        name = None
    if not (isinstance(op, str) and op in OPERATORS):
        guess = (_OP_ALIASES.get(op.strip().lower()) or nearest(op, OPERATORS)
                 if isinstance(op, str) else None)
        problems.append(f"{path}.op: unknown operator {show(op)}"
                        + (did_you_mean(guess) if guess else f"; use one of {', '.join(OPERATORS)}"))
        op = None
    kind = FIELDS[name][0] if name else None
    where = f"{path}.value"
    has_value = "value" in raw and raw["value"] is not None
    value = raw.get("value")
    if op is None:  # still judge the value against the field, so one reply lists everything
        if name and has_value:
            pairs = ([(v, f"{where}[{i}]") for i, v in enumerate(value)]
                     if isinstance(value, list) else [(value, where)])
            _values(name, pairs, check)
        return None
    if op in NULL_OPS:
        if has_value:
            problems.append(f"{where}: {op} takes no value; remove it")
        return Cond(name, op) if name and len(problems) == before else None
    if not has_value:
        problems.append(f"{where}: {op} needs a value (use is_null to match missing values)")
        return None
    if op in DAY_OPS:
        if kind is not None and kind not in TIME_KINDS:
            problems.append(f"{path}.op: {op} needs a date or timestamp field, not {name} ({kind})")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DAYS:
            problems.append(f"{where}: {op} needs a whole number of days between 0 and {MAX_DAYS}, "
                            f"not {show(value)}")
        return Cond(name, op, value) if name and len(problems) == before else None
    if kind == "bool" and (op in ORDER_OPS or op == "between"):
        problems.append(f"{path}.op: {op} does not apply to {name} (true or false); use eq or ne")
    elif name and check.intake and (op in ORDER_OPS or op == "between"):
        refusal = _order_refusal(name, op, value)
        if refusal:
            problems.append(f"{path}.op: {refusal}")
    if op in LIST_OPS or op == "between":
        want = "[low, high]" if op == "between" else "a non-empty list of values"
        if not isinstance(value, list) or not value or (op == "between" and len(value) != 2):
            problems.append(f"{where}: {op} needs {want}, not {show(value)}")
            return None
        got = _values(name, [(v, f"{where}[{i}]") for i, v in enumerate(value)], check)
        if op == "between" and len(problems) == before and got[0] > got[1]:
            problems.append(f"{where}: between bounds are reversed ({show(value[0])} > "
                            f"{show(value[1])}); write [low, high]")
        if not name or len(problems) > before:
            return None
        return Cond(name, op, tuple(got))
    if isinstance(value, (list, dict)):
        fix = "; use in for a list of values" if op in SCALAR_OPS else ""
        problems.append(f"{where}: {op} compares with one value, not {show(value)}{fix}")
        return None
    v = _values(name, [(value, where)], check)[0]
    return Cond(name, op, v) if name and len(problems) == before else None


def parse_rule(raw: Any, path: str = "rule", depth: int = 0, *, intake: bool = False) -> Rule:
    """A rule tree from its YAML form, or RuleProblems listing every problem.

    With `intake`, values are also checked against the data model's domains
    (enumerations, country and language codes, lead_score's range) and ordering
    operators are refused on categories and codes; a stored brief is reparsed
    without them, as it was accepted.
    """
    check = _Check(intake)
    rule = _parse(raw, path, depth, check)
    if check.conditions > MAX_CONDITIONS:
        check.problems.append(f"{path}: {check.conditions:,} conditions; at most {MAX_CONDITIONS} "
                              "in one rule (use in for a list of values)")
    if check.values > MAX_RULE_VALUES:
        check.problems.append(f"{path}: {check.values:,} values; at most {MAX_RULE_VALUES:,} in one rule")
    if check.problems or rule is None:
        raise RuleProblems(check.problems or [f"{path}: empty rule"])
    return rule


def _parse(raw: Any, path: str, depth: int, check: _Check) -> Rule | None:
    problems = check.problems
    if depth > MAX_DEPTH:
        problems.append(f"{path}: rules nest deeper than {MAX_DEPTH} levels; flatten them")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a condition or all/any/not group, not {show(raw)}")
        return None
    groups = [k for k in ("all", "any", "not") if k in raw]
    if not groups:
        if "field" in raw or "op" in raw:
            return _parse_cond(raw, path, check)
        keys = ", ".join(clip(str(k), 40) for k in list(raw)[:5]) or "(none)"
        problems.append(f"{path}: unknown key {keys}; use all, any, not or a {{field, op, value}} condition")
        return None
    if len(raw) != 1:
        keys = ", ".join(clip(str(k), 40) for k in list(raw)[:5])
        problems.append(f"{path}: a group has exactly one key (all, any or not); split {keys}")
        return None
    key = groups[0]
    body = raw[key]
    if key == "not":
        inner = _parse(body, f"{path}.not", depth + 1, check)
        return Not(inner) if inner is not None else None
    if not isinstance(body, list) or not body:
        problems.append(f"{path}.{key}: needs a non-empty list of rules")
        return None
    if len(body) > MAX_GROUP_ITEMS:
        problems.append(f"{path}.{key}: {len(body):,} rules in one group; at most {MAX_GROUP_ITEMS} "
                        "(nest groups, or use in for a list of values)")
    items = [_parse(item, f"{path}.{key}[{i}]", depth + 1, check) for i, item in enumerate(body)]
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
    col: ColumnElement[Any] = table.c[rule.field] if rule.field not in LIFECYCLE_FIELDS else (
        sa.select(lifecycle_scores.c[LIFECYCLE_FIELDS[rule.field]])
        .where(lifecycle_scores.c.customer_id == table.c.customer_id).scalar_subquery())
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
