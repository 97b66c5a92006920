"""The campaign brief: model, intake validation (every problem at once), JSON Schema."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from campaignops.errors import BriefError
from campaignops.rules import RULE_JSON_SCHEMA, Rule, RuleProblems, parse_rule

# Fields a template may personalise with; they are copied into the audience table.
PERSONALISATION_FIELDS = ("first_name", "last_name", "language", "country", "loyalty_tier")
SLUG = r"^[a-z0-9][a-z0-9._-]{1,127}$"
# Marked in the model's schema, then pointed at the Rule definition by brief_json_schema().
RuleDict = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-campaignops-rule": True})]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently drop a setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Kpi(Strict):
    metric: str = Field(min_length=1)
    target: float


class Schedule(Strict):
    cron: str = Field(min_length=9, description="five-field cron, e.g. '0 9 * * MON'")
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("cron needs five fields (minute hour day month weekday)")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name like Europe/Paris") from None
        return v


class Content(Strict):
    template_id: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    required_fields: list[Literal["first_name", "last_name", "language", "country", "loyalty_tier"]] = []
    fallbacks: dict[Literal["first_name", "last_name", "language", "country", "loyalty_tier"], str] = {}


class Audience(Strict):
    include: RuleDict
    exclude: RuleDict | None = None


class FrequencyCap(Strict):
    max_messages: int = Field(ge=1, le=1000)
    per_days: int = Field(ge=1, le=365)


class ControlGroup(Strict):
    percent: float = Field(ge=0, le=50, description="held-out share, 0-50")
    salt: str = Field(min_length=1, max_length=128)


class Cell(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    percent: float = Field(gt=0, le=100)
    offer_code: str | None = None


class ExpectedAudience(Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)


class ApprovalStage(Strict):
    stage: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    approvers: list[str] = Field(min_length=1)


class Brief(Strict):
    """A campaign brief as written by the campaign team (see examples/briefs/)."""

    campaign_id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    objective: str = Field(min_length=1)
    kpi: Kpi
    channel: Literal["email"] = "email"
    schedule: Schedule | None = None
    send_at: dt.datetime | None = None
    content: Content
    audience: Audience
    frequency_cap: FrequencyCap | None = None
    control_group: ControlGroup = ControlGroup(percent=0, salt="none")
    cells: list[Cell] = Field(min_length=1)
    expected_audience: ExpectedAudience
    drift_tolerance_percent: float | None = Field(default=None, gt=0, le=100)
    standing_approval: Literal["allowed", "not_allowed"] = "not_allowed"
    approvals: list[ApprovalStage] = Field(min_length=1)
    approval_timeout_hours: float = Field(default=24, gt=0, le=24 * 30)

    @field_validator("send_at")
    @classmethod
    def _future(cls, v: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("send_at needs a time zone, e.g. 2027-03-01T14:00:00Z")
        # Only intake judges the clock; a stored brief reloads as it was accepted.
        now = (info.context or {}).get("now")
        if now is not None and v < now:
            raise ValueError(f"send_at {v.isoformat()} is in the past; set a future time or null")
        return v

    @field_validator("cells")
    @classmethod
    def _cells_add_up(cls, v: list[Cell]) -> list[Cell]:
        total = sum(c.percent for c in v)
        if abs(total - 100) > 1e-9:
            raise ValueError(f"cell percents add to {total:g}, not 100; adjust them")
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("cell names must be unique")
        return v

    @field_validator("approvals")
    @classmethod
    def _stages_unique(cls, v: list[ApprovalStage]) -> list[ApprovalStage]:
        names = [s.stage for s in v]
        if len(set(names)) != len(names):
            raise ValueError("approval stage names must be unique")
        return v

    @cached_property
    def include_rule(self) -> Rule:
        """The parsed include rule."""
        return parse_rule(self.audience.include, "audience.include")

    @cached_property
    def exclude_rule(self) -> Rule | None:
        """The parsed exclude rule, if any."""
        if self.audience.exclude is None:
            return None
        return parse_rule(self.audience.exclude, "audience.exclude")

    @property
    def offer_codes(self) -> list[str]:
        """The offers the cells use, in cell order, without repeats."""
        return list(dict.fromkeys(c.offer_code for c in self.cells if c.offer_code))

    def digest(self) -> str:
        """SHA-256 of the brief's canonical JSON: what an approval is bound to."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "brief"


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc(loc)
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field; remove it or fix the spelling")
        elif e["type"] == "missing":
            problems.append(f"{where}: required field is missing; add it")
        else:
            msg = re.sub(r"^Value error, ", "", e["msg"])
            problems.append(f"{where}: {msg}")
    return problems


def validate_brief(data: Any, source: str = "brief") -> Brief:
    """A Brief from parsed YAML, or BriefError listing every problem at once."""
    if not isinstance(data, dict):
        raise BriefError(source, ["brief: expected a mapping of fields at the top level"])
    problems: list[str] = []
    brief: Brief | None = None
    try:
        brief = Brief.model_validate(data, context={"now": dt.datetime.now(dt.UTC)})
    except ValidationError as err:
        problems += _pydantic_problems(err)
    audience = data.get("audience")
    if isinstance(audience, dict):
        for key in ("include", "exclude"):
            if audience.get(key) is not None:
                try:
                    parse_rule(audience[key], f"audience.{key}")
                except RuleProblems as rp:
                    problems += rp.problems
    expected = data.get("expected_audience")
    if isinstance(expected, dict):
        lo, hi = expected.get("min"), expected.get("max")
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            problems.append("expected_audience: min is above max; swap them")
    if brief is not None:
        if brief.schedule is not None and brief.send_at is not None:
            problems.append("send_at: a scheduled campaign sends at each run; remove send_at or schedule")
        owner = brief.owner.strip().lower()
        for i, stage in enumerate(brief.approvals):
            if owner in (a.strip().lower() for a in stage.approvers):
                problems.append(
                    f"approvals[{i}].approvers: the owner may not approve their own campaign; remove them"
                )
    if problems:
        raise BriefError(source, problems)
    assert brief is not None
    return brief


def load_brief(path: str | Path) -> Brief:
    """Read and validate a brief file."""
    p = Path(path)
    if not p.is_file():
        raise BriefError(str(path), [f"brief: no file at {path}; check the path"])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BriefError(p.name, [f"brief: not valid YAML{where}; fix the syntax"]) from None
    return validate_brief(data, p.name)


def brief_json_schema() -> dict[str, Any]:
    """The published JSON Schema for brief files (docs/brief.schema.json)."""
    def point_at_rule(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("x-campaignops-rule"):
                return {"$ref": "#/$defs/Rule"}
            return {k: point_at_rule(v) for k, v in node.items()}
        if isinstance(node, list):
            return [point_at_rule(v) for v in node]
        return node

    schema: dict[str, Any] = point_at_rule(Brief.model_json_schema())
    schema.setdefault("$defs", {})["Rule"] = {k: v for k, v in RULE_JSON_SCHEMA.items() if k != "$id"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "campaignops campaign brief"
    return schema
