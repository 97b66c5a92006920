"""The lifecycle scoring model (lifecycle/*.yaml): validated like a brief, every problem at once.

A model gives fit points from attribute rules (the brief's rule language), engagement points
with a half-life decay (from the optional ``engagement_events`` table, or from the customers'
own columns without it), the stages in order with what moves a customer into each (a score
threshold, a rule, or sales only), the recycle rules that move a customer backwards with a
reason, and the hand-off SLA. ``score_of`` and ``next_stage`` are the plain-Python reference
the SQL in ``campaignops.lifecycle.scoring`` is tested against.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat, StrictInt, ValidationError

from campaignops.brief import Line, RuleDict, Strict, _pydantic_problem, with_rule_schema
from campaignops.briefio import clean_tree, decode_brief, read_brief_file
from campaignops.errors import LifecycleModelError
from campaignops.intake_yaml import INVALID, Problems, load_yaml
from campaignops.rules import Rule, RuleProblems, evaluate, parse_rule

# The funnel, in order (domains.LIFECYCLE_STAGES without "churned", which is not scored).
STAGES: tuple[str, ...] = ("suspect", "prospect", "lead", "mql", "sql", "opportunity", "customer")
StageName = Literal["suspect", "prospect", "lead", "mql", "sql", "opportunity", "customer"]
EVENT_TYPES = ("email_open", "email_click", "web_visit", "form_submit", "purchase")
EventType = Literal["email_open", "email_click", "web_visit", "form_submit", "purchase"]
# Customers' own timestamp columns the model may score without engagement_events.
ENGAGEMENT_COLUMNS = ("last_open_at", "last_purchase_at")
EngagementColumn = Literal["last_open_at", "last_purchase_at"]
Points = Annotated[StrictInt | StrictFloat, Field(ge=-1000, le=1000)]
Positive = Annotated[StrictInt | StrictFloat, Field(gt=0, le=36500)]
Reason = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
# Reasons a forward move records; a recycle names its own.
RESERVED_REASONS = ("initial", "score", "rule", "sales_accepted")
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "lifecycle" / "default.yaml"


class FitRule(Strict):
    """Points for every customer the rule matches."""

    name: Reason
    points: Points
    rule: RuleDict


class Engagement(Strict):
    """Behaviour points, each halved every `half_life_days` (events older than the window count 0)."""

    half_life_days: Positive
    window_days: Positive | None = None
    max_points: Points | None = None
    events: dict[EventType, Points] = Field(default_factory=dict)
    columns: dict[EngagementColumn, Points] = Field(default_factory=dict)


class Stage(Strict):
    """A stage and what moves a customer into it: a score, a rule, or sales (manual)."""

    name: StageName
    min_score: Points | None = None
    rule: RuleDict | None = None
    manual: bool = False


class Recycle(Strict):
    """A customer in one of `from` whose score falls below `below_score` goes back to `to`."""

    from_: list[StageName] = Field(alias="from", min_length=1)
    below_score: Points
    to: StageName
    reason: Reason


class Sla(Strict):
    """How long sales has to accept an MQL."""

    mql_accept_hours: Positive


class LifecycleModel(Strict):
    """A versioned scoring model."""

    version: Line
    description: str | None = Field(default=None, max_length=2000)
    fit: list[FitRule] = Field(default_factory=list, max_length=100)
    engagement: Engagement
    stages: list[Stage]
    recycle: list[Recycle] = Field(default_factory=list, max_length=20)
    sla: Sla

    @cached_property
    def fit_rules(self) -> list[tuple[float, Rule]]:
        """Each fit rule's points and parsed rule."""
        return [(float(f.points), parse_rule(f.rule, f"fit.{f.name}")) for f in self.fit]

    @cached_property
    def rule_stages(self) -> list[tuple[int, Rule]]:
        """(rank, rule) of the stages entered by a rule, highest first."""
        return sorted(((STAGES.index(s.name), parse_rule(s.rule, f"stages.{s.name}.rule"))
                       for s in self.stages if s.rule is not None), key=lambda x: -x[0])

    @cached_property
    def score_stages(self) -> list[tuple[int, float]]:
        """(rank, min_score) of the stages entered by score, highest first (the first stage at 0)."""
        out = [(STAGES.index(s.name), float(s.min_score)) for s in self.stages if s.min_score is not None]
        return sorted(out, key=lambda x: -x[0])

    @property
    def manual_stages(self) -> list[str]:
        """Stages only sales can move a customer into."""
        return [s.name for s in self.stages if s.manual]


def _semantic_problems(model: LifecycleModel) -> list[str]:
    """What the types alone cannot check: the stage order, the recycle ranks, the rules."""
    out: list[str] = []
    names = [s.name for s in model.stages]
    if names != list(STAGES):
        out.append(f"stages: list every stage once, in order: {', '.join(STAGES)} (got {', '.join(names)})")
    last = None
    for i, s in enumerate(model.stages):
        ways = sum((s.min_score is not None, s.rule is not None, s.manual))
        if i == 0 and ways:
            out.append(f"stages[0]: {s.name} is where everyone starts; remove min_score, rule and manual")
        elif i > 0 and ways != 1:
            out.append(f"stages[{i}]: {s.name} needs exactly one of min_score, rule or manual: true")
        if s.min_score is not None:
            if last is not None and s.min_score <= last:
                out.append(f"stages[{i}].min_score: {s.min_score} must be above the previous stage's "
                           f"{last}; thresholds rise along the funnel")
            if any(p.manual for p in model.stages[:i]):
                out.append(f"stages[{i}]: {s.name} comes after a manual stage and cannot be entered by score")
            last = s.min_score
        if s.rule is not None:
            try:
                parse_rule(s.rule, f"stages[{i}].rule", intake=True)
            except RuleProblems as rp:
                out += rp.problems
    for i, f in enumerate(model.fit):
        try:
            parse_rule(f.rule, f"fit[{i}].rule", intake=True)
        except RuleProblems as rp:
            out += rp.problems
    for i, r in enumerate(model.recycle):
        low = [s for s in r.from_ if STAGES.index(s) <= STAGES.index(r.to)]
        if low:
            out.append(f"recycle[{i}].to: {r.to} is not behind {', '.join(low)}; a recycle moves backwards")
        if r.reason in RESERVED_REASONS:
            out.append(f"recycle[{i}].reason: {r.reason} is reserved for forward moves; name the recycle")
        if r.to in model.manual_stages:
            out.append(f"recycle[{i}].to: {r.to} is a manual stage; recycle to a stage entered by score")
    if not model.engagement.events and not model.engagement.columns:
        out.append("engagement: give points for events, columns or both")
    return out


def validate_model(data: Any, source: str = "model") -> LifecycleModel:
    """A LifecycleModel from parsed YAML, or LifecycleModelError listing every problem."""
    problems = Problems()
    data, complete = clean_tree(data, problems)
    if not complete or not isinstance(data, dict):
        if complete and data is not INVALID:
            problems.add((), "expected a mapping of fields at the top level")
        raise LifecycleModelError(source, problems.items)
    try:
        model = LifecycleModel.model_validate(data)
    except ValidationError as err:
        raise LifecycleModelError(source, [_pydantic_problem(e) for e in err.errors()]) from None
    found = _semantic_problems(model)
    if found:
        raise LifecycleModelError(source, found)
    return model


def load_model(path: str | Path | None = None) -> LifecycleModel:
    """Read and validate a model file (default: lifecycle/default.yaml)."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    source = path.name or str(path)
    problems = Problems()
    raw = read_brief_file(path, problems)
    text = decode_brief(raw, problems) if raw is not None else None
    if text is None:
        raise LifecycleModelError(source, problems.items)
    tree, complete = load_yaml(text, problems)
    if not complete:
        raise LifecycleModelError(source, problems.items)
    return validate_model(tree, source)


def model_json_schema() -> dict[str, Any]:
    """The published JSON Schema for model files (docs/lifecycle.schema.json)."""
    return with_rule_schema(LifecycleModel.model_json_schema(by_alias=True),
                            "campaignops lifecycle scoring model")


def schema_text() -> str:
    """The schema as the file docs/lifecycle.schema.json holds it."""
    return json.dumps(model_json_schema(), indent=2) + "\n"


# --------------------------------------------------------------- the Python reference


def decay(age_days: float, half_life_days: float) -> float:
    """The weight of something `age_days` old: halved every half-life."""
    return float(0.5 ** (age_days / half_life_days))


def _age_days(at: dt.datetime, as_of: dt.datetime) -> float:
    return (as_of - at).total_seconds() / 86400.0


def window_start(eng: Engagement, as_of: dt.datetime) -> dt.datetime | None:
    """The earliest moment that still counts (None: no window)."""
    return None if eng.window_days is None else as_of - dt.timedelta(days=float(eng.window_days))


def _counts(at: dt.datetime, eng: Engagement, as_of: dt.datetime) -> bool:
    start = window_start(eng, as_of)
    return at <= as_of and (start is None or at >= start)


def score_of(model: LifecycleModel, row: Mapping[str, Any],
             events: Iterable[tuple[str, dt.datetime]] | None, as_of: dt.datetime) -> float:
    """One customer's score: fit + engagement (events when given, else the columns)."""
    fit = sum(p for p, rule in model.fit_rules if evaluate(rule, dict(row), as_of))
    eng = model.engagement
    total = 0.0
    if events is not None:
        for kind, at in events:
            if kind in eng.events and _counts(at, eng, as_of):
                weight = decay(_age_days(at, as_of), float(eng.half_life_days))
                total += float(eng.events[kind]) * weight  # type: ignore[index]
    else:
        for col, points in eng.columns.items():
            seen = row.get(col)
            if seen is not None and _counts(seen, eng, as_of):
                total += float(points) * decay(_age_days(seen, as_of), float(eng.half_life_days))
    if eng.max_points is not None:
        total = min(total, float(eng.max_points))
    return float(fit) + total


def candidate_rank(model: LifecycleModel, row: Mapping[str, Any], score: float, as_of: dt.datetime) -> int:
    """The highest stage the customer's score or a stage rule reaches (never a manual stage)."""
    ranks = [0] + [r for r, m in model.score_stages if score >= m]
    ranks += [r for r, rule in model.rule_stages if evaluate(rule, dict(row), as_of)]
    return max(ranks)


@dataclass(frozen=True)
class Move:
    """Where a customer ends up after a scoring, and why (reason is None when unchanged)."""

    stage: str
    reason: str | None


def next_stage(model: LifecycleModel, candidate: int, score: float, previous: str | None) -> Move:
    """Forward by score or rule; backwards only by a recycle rule, with its reason; else stay."""
    if previous is None:
        return Move(STAGES[candidate], "initial")
    prev = STAGES.index(previous)
    if candidate > prev:
        return Move(STAGES[candidate], "score" if candidate in dict(model.score_stages) else "rule")
    for r in model.recycle:
        if previous in r.from_ and score < float(r.below_score):
            return Move(r.to, r.reason)
    return Move(previous, None)


__all__ = ["EVENT_TYPES", "STAGES", "LifecycleModel", "Move", "load_model", "validate_model"]
