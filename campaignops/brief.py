"""The campaign brief: model, the intake boundary (every problem at once), JSON Schema.

Every way in goes through one boundary: `load_brief(path)` reads a file,
`parse_brief(data, source)` takes its bytes, `validate_brief(data, source)`
takes already-parsed values (deployment parameters); each returns a valid
Brief or raises BriefError, never another exception. The limits are in
campaignops/intake_limits.py and docs/intake.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from campaignops.briefio import clean_tree, decode_brief, read_brief_file
from campaignops.domains import did_you_mean, nearest
from campaignops.errors import BriefError
from campaignops.intake_limits import MAX_YEAR, MIN_YEAR, within_years
from campaignops.intake_yaml import INVALID, Problems, load_yaml, render_path
from campaignops.metrics import METRICS
from campaignops.metrics import known_names as known_metrics
from campaignops.metrics import resolve as resolve_metric
from campaignops.rules import RULE_JSON_SCHEMA, Rule, RuleProblems, parse_rule
from campaignops.sms import MAX_TEXT, PLACEHOLDER, placeholders, segments
from campaignops.textsafe import show

# Fields a template may personalise with; they are copied into the audience table.
PERSONALISATION_FIELDS = ("first_name", "last_name", "language", "country", "loyalty_tier")
PersonalisationField = Literal["first_name", "last_name", "language", "country", "loyalty_tier"]
SLUG = r"^[a-z0-9][a-z0-9._-]{1,127}$"
OFFER_CODE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Marked in the model's schema, then pointed at the Rule definition by brief_json_schema().
RuleDict = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-campaignops-rule": True})]
# What each pattern asks for, in words (a pattern in a message helps nobody).
_PATTERN_HINTS = {
    SLUG: "use 2-128 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
    OFFER_CODE: "use up to 64 letters, digits, '.', '_' or '-'",
    RUN_ID: "use a run id (up to 64 letters, digits, '_' or '-')",
    r"^[A-Za-z0-9_-]{1,64}$": "use 1-64 letters, digits, '_' or '-'",
    r"^[a-z][a-z0-9_-]{0,31}$": "use up to 32 lowercase letters, digits, '_' or '-', starting with a letter",
}


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank; write a value")
    return v


def _one_line(v: str) -> str:
    if "\n" in v or "\t" in v:
        raise ValueError("must be one line (no line breaks or tabs)")
    return v


# Text a person writes: not blank, bounded, on one line unless it is prose.
Line = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_not_blank),
                 AfterValidator(_one_line)]
Prose = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]
Address = Annotated[str, Field(min_length=1, max_length=254), AfterValidator(_not_blank),
                    AfterValidator(_one_line)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently drop a setting. Numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Kpi(Strict):
    metric: Line
    target: StrictFloat

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if resolve_metric(v) is None:
            guess = did_you_mean(nearest(v, known_metrics()))
            raise ValueError(f"unknown metric {show(v)}{guess or '; use ' + ' or '.join(METRICS)} "
                             "(docs/results.md)")
        return v


class Schedule(Strict):
    cron: str = Field(min_length=9, max_length=100, description="five-field cron, e.g. '0 9 * * MON'")
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("cron needs five fields (minute hour day month weekday)")
        problem = cron_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        if not _zone_ok(v):
            region = sorted(z for z in _zones() if z.startswith(f"{v}/"))[:2]
            guess = did_you_mean(nearest(v, _zones()))
            hint = (f"; {show(v)} is a region: name a zone in it, like {' or '.join(region)}"
                    if region else guess or "; use an IANA name like Europe/Paris")
            raise ValueError(f"unknown time zone {show(v)}{hint}")
        return v


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    """The IANA zones zoneinfo knows."""
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=256)
def _zone_ok(name: str) -> bool:
    """Whether both zoneinfo and Prefect's scheduler know the zone."""
    from prefect.client.schemas.schedules import CronSchedule

    if name not in _zones():
        return False
    try:
        CronSchedule(cron="0 0 * * *", timezone=name)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=256)  # Prefect's CronSchedule lists the zone files on each construction
def cron_problem(cron: str) -> str | None:
    """Why a five-field cron cannot schedule a campaign, or None.

    It must parse with cronsim (the calendar's parser, and a day that exists)
    and with Prefect's own CronSchedule (what the scheduler runs).
    """
    from cronsim import CronSim, CronSimError
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSim(cron, dt.datetime(2026, 1, 1))
    except CronSimError as exc:
        return f"{show(cron)} is not a valid cron expression ({exc}); use five fields like '0 9 * * MON'"
    try:
        CronSchedule(cron=cron)
    except ValueError:
        return (f"{show(cron)} is not a cron expression Prefect's scheduler accepts; "
                "use five plain fields like '0 9 * * MON'")
    return None


class Content(Strict):
    template_id: Line
    subject: Line | None = Field(default=None, description="required for channel email")
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_not_blank)] | None = (
        Field(default=None, description="the SMS message, required for channel sms; {first_name} personalises"))
    required_fields: list[PersonalisationField] = Field(default=[], max_length=5)
    fallbacks: dict[PersonalisationField, Annotated[str, Field(max_length=256),
                                                   AfterValidator(_one_line)]] = {}


class FromRun(Strict):
    """A correction's audience: those a past run handed off, by cell, offer and ESP outcome."""

    run: str = Field(pattern=RUN_ID, description="the past run's id")
    cells: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default=[], max_length=100, description="only these cells of the run (default: all)")
    offers: list[Annotated[str, Field(pattern=OFFER_CODE)]] = Field(
        default=[], max_length=100, description="only these offers of the run (default: all)")
    outcome: Literal["accepted", "rejected"] = "accepted"


class Audience(Strict):
    include: RuleDict | None = None
    exclude: RuleDict | None = None
    from_run: FromRun | None = Field(
        default=None, description="correction: those the run handed off (intersected with include)")
    missed_by: str | None = Field(
        default=None, pattern=RUN_ID,
        description="correction: eligible under include now, minus everyone the run delivered to "
                    "or held out")
    entered_stage: Literal["prospect", "lead", "mql", "sql", "opportunity", "customer"] | None = Field(
        default=None,
        description="lifecycle trigger: only customers who entered this stage and whom this campaign "
                    "has not reached since (docs/lifecycle.md)")

    @model_validator(mode="after")
    def _one_source(self) -> Audience:
        if self.from_run is not None and self.missed_by is not None:
            raise ValueError("from_run and missed_by exclude each other; keep one")
        if self.entered_stage is not None and self.source_run is not None:
            raise ValueError("entered_stage is for a lifecycle-triggered campaign, not a correction; "
                             "remove entered_stage or the correction's source")
        if self.include is None and self.from_run is None:
            raise ValueError("include is required (only a from_run correction may leave it out); "
                             "add include")
        return self

    @property
    def source_run(self) -> str | None:
        """The past run a correction audience starts from, or None for an ordinary brief."""
        return self.from_run.run if self.from_run is not None else self.missed_by


class FrequencyCap(Strict):
    max_messages: StrictInt = Field(ge=1, le=1000)
    per_days: StrictInt = Field(ge=1, le=365)


class ControlGroup(Strict):
    percent: StrictFloat = Field(ge=0, le=50, description="held-out share, 0-50")
    salt: str = Field(min_length=1, max_length=128)

    @field_validator("salt")
    @classmethod
    def _salt_line(cls, v: str) -> str:
        return _one_line(_not_blank(v))


class Watch(Strict):
    """How far a recurring run may move from its recent runs before QA warns (docs/watch.md)."""

    psi_warning: StrictFloat = Field(default=0.1, gt=0, le=10,
                                     description="population stability index per dimension that warns")
    churn_warning_percent: StrictFloat = Field(default=2, gt=0, le=100,
                                               description="one cause moving this share of the previous audience warns")
    churn_min_count: StrictInt = Field(default=50, ge=1, le=10**12,
                                       description="and at least this many people")
    recent_runs: StrictInt = Field(default=4, ge=1, le=52, description="sent runs the composition is compared with")
    critical: StrictBool = Field(default=False, description="true: a run that moved is blocked, not only warned")


class Cell(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    percent: StrictFloat = Field(gt=0, le=100)
    offer_code: str | None = Field(default=None, pattern=OFFER_CODE)


class ExpectedAudience(Strict):
    min: StrictInt = Field(ge=0, le=10**12)
    max: StrictInt = Field(ge=1, le=10**12)

    @model_validator(mode="after")
    def _in_order(self) -> ExpectedAudience:
        if self.min > self.max:
            raise ValueError(f"min {self.min:,} is above max {self.max:,}; swap them")
        return self


class ApprovalStage(Strict):
    stage: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    approvers: list[Address] = Field(min_length=1, max_length=50)

    @field_validator("approvers")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        folded = [a.strip().casefold() for a in v]
        twice = sorted({a for a in folded if folded.count(a) > 1})
        if twice:
            raise ValueError(f"{show(twice[0])} is listed twice; list each approver once")
        return v


HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_PATTERN_HINTS[HHMM] = "use a 24-hour time like 21:00"


class QuietHours(Strict):
    start: str = Field(pattern=HHMM, description="local time the quiet window starts, e.g. 21:00")
    end: str = Field(pattern=HHMM, description="local time it ends, e.g. 08:00")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError(f"start and end are both {self.start}; give a window like 21:00 to 08:00")
        return self


# SMS-only fields: left out of an e-mail brief's digest when unset, so e-mail digests stay as they were.
SMS_FIELDS = ("max_segments", "quiet_hours", "quiet_hours_policy")


class Brief(Strict):
    """A campaign brief as written by the campaign team (see examples/briefs/)."""

    campaign_id: str = Field(pattern=SLUG)
    name: Line
    owner: Address
    objective: Prose
    kpi: Kpi
    channel: Literal["email", "sms"] = "email"
    schedule: Schedule | None = None
    send_at: dt.datetime | None = None
    content: Content
    audience: Audience
    frequency_cap: FrequencyCap | None = None
    waive_frequency_cap: bool = Field(
        default=False, description="a correction (from_run or missed_by) may ignore the cap")
    control_group: ControlGroup = ControlGroup(percent=0, salt="none")
    cells: list[Cell] = Field(min_length=1, max_length=100)
    expected_audience: ExpectedAudience
    drift_tolerance_percent: StrictFloat | None = Field(default=None, gt=0, le=100)
    watch: Watch = Watch()
    standing_approval: Literal["allowed", "not_allowed"] = "not_allowed"
    approvals: list[ApprovalStage] = Field(min_length=1, max_length=10)
    approval_timeout_hours: StrictFloat = Field(default=24, gt=0, le=24 * 30)
    max_segments: StrictInt | None = Field(default=None, ge=1, le=10,
                                           description="SMS: most segments a message may take (default 1)")
    quiet_hours: QuietHours | None = Field(default=None, description="SMS: no sends in this local window")
    quiet_hours_policy: Literal["block", "defer"] | None = Field(
        default=None, description="SMS: QA blocks a send in quiet hours (block, default) or defers it")

    @field_validator("send_at", mode="before")
    @classmethod
    def _no_epoch_numbers(cls, v: Any) -> Any:
        if isinstance(v, (int, float)):  # pydantic would read them as seconds since 1970
            raise ValueError(f"expected a timestamp like 2027-03-01T14:00:00Z, not {show(v)}")
        return v

    @field_validator("send_at")
    @classmethod
    def _future(cls, v: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("send_at needs a time zone, e.g. 2027-03-01T14:00:00Z")
        if not within_years(v):
            raise ValueError(f"{show(v)} is outside the years {MIN_YEAR}-{MAX_YEAR}; use a real date")
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

    @model_validator(mode="after")
    def _waiver_for_corrections(self) -> Brief:
        if self.waive_frequency_cap and self.audience.source_run is None:
            raise ValueError("waive_frequency_cap: only a correction (audience.from_run or "
                             "audience.missed_by) may waive the frequency cap; remove it")
        return self

    @property
    def effective_frequency_cap(self) -> FrequencyCap | None:
        """The cap segmentation and QA apply: none when a correction waives it."""
        return None if self.waive_frequency_cap else self.frequency_cap

    @cached_property
    def include_rule(self) -> Rule | None:
        """The parsed include rule (None: a from_run correction's whole source)."""
        if self.audience.include is None:
            return None
        return parse_rule(self.audience.include, "audience.include")

    @cached_property
    def exclude_rule(self) -> Rule | None:
        """The parsed exclude rule, if any."""
        if self.audience.exclude is None:
            return None
        return parse_rule(self.audience.exclude, "audience.exclude")

    @property
    def segment_limit(self) -> int:
        """The most SMS segments a message may take."""
        return self.max_segments or 1

    @property
    def quiet_policy(self) -> Literal["block", "defer"]:
        """What QA does with a send inside quiet hours."""
        return self.quiet_hours_policy or "block"

    @property
    def offer_codes(self) -> list[str]:
        """The offers the cells use, in cell order, without repeats."""
        return list(dict.fromkeys(c.offer_code for c in self.cells if c.offer_code))

    def digest(self) -> str:
        """SHA-256 of the brief's canonical JSON: what an approval is bound to."""
        dump = self.model_dump(mode="json")
        unset: dict[tuple[str, ...], Any] = {**{(k,): None for k in SMS_FIELDS}, ("content", "text"): None,
                 ("audience", "from_run"): None, ("audience", "missed_by"): None,
                 ("audience", "entered_stage"): None, ("waive_frequency_cap",): False,
                 ("watch",): Watch().model_dump(mode="json")}
        for path, value in unset.items():  # fields added since, left out while unset
            parent = dump
            for key in path[:-1]:
                parent = parent[key]
            if parent[path[-1]] == value:
                del parent[path[-1]]
        canon = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


TOP_FIELDS = tuple(Brief.model_fields)
# Every field name a brief may hold, at any level: the only file text a message may name.
KNOWN_KEYS = frozenset(
    name for model in (Brief, Kpi, Schedule, Content, Audience, FromRun, FrequencyCap, ControlGroup, Cell,
                       ExpectedAudience, ApprovalStage, Watch, QuietHours)
    for name in model.model_fields) | {"field", "op", "value", "all", "any", "not"}


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose fields sit at `loc` (for a did-you-mean on an unknown key)."""
    model: Any = Brief
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        model = fields[part].annotation
        while get_origin(model) is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            args = [a for a in get_args(model) if a is not type(None)]
            model = args[-1] if args else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _pydantic_problem(e: Any) -> str:
    """One pydantic error as a problem naming the field and the fix."""
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    where = render_path(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        guess = nearest(str(loc[-1]), model.model_fields) if model else None
        return f"{where}: unknown field{did_you_mean(guess) or '; remove it or fix the spelling'}"
    if kind == "missing":
        return f"{where}: required field is missing; add it"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        guess = nearest(value, options) if isinstance(value, str) and len(options) > 1 else None
        listed = f"use {ctx.get('expected')}"
        return (f"{where}: {show(value)} is not allowed here"
                + (f"{did_you_mean(guess)} ({listed})" if guess else f"; {listed}"))
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(ctx.get("pattern")), "fix its spelling")
        return f"{where}: {show(value)} is not valid here; {hint}"
    expected = {"int_type": "a whole number", "int_parsing": "a whole number",
                "int_from_float": "a whole number", "float_type": "a number",
                "float_parsing": "a number", "finite_number": "a finite number",
                "string_type": "text", "list_type": "a list", "dict_type": "a mapping of fields",
                "model_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
                "datetime_type": "a timestamp like 2027-03-01T14:00:00Z",
                "datetime_parsing": "a timestamp like 2027-03-01T14:00:00Z",
                "datetime_from_date_parsing": "a timestamp like 2027-03-01T14:00:00Z"}.get(kind)
    if expected:
        return f"{where}: expected {expected}, not {show(value)}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"{where}: must not be empty; write a value"
    return f"{where}: {re.sub(r'^Value error, ', '', e['msg'])}"


def _looks_like_a_brief(data: Any) -> bool:
    """Whether parsed data is a mapping with at least one of a brief's fields."""
    return isinstance(data, dict) and any(k in data for k in TOP_FIELDS)


def _not_a_brief(source: str) -> BriefError:
    """Nothing of a file that is not a brief is echoed back."""
    return BriefError(source, [f"brief: this is not a brief (expected a mapping of fields such as "
                               f"{', '.join(TOP_FIELDS[:4])} at the top level); check the file"])


def _check(data: Any, source: str, problems: Problems) -> Brief:
    """The intake checks on parsed data; BriefError lists every problem at once."""
    data, complete = clean_tree(data, problems)
    if not complete:
        raise BriefError(source, problems.items)
    if not isinstance(data, dict):
        if data is not INVALID:
            problems.add((), "expected a mapping of fields at the top level")
        raise BriefError(source, problems.items)
    later: list[str] = []
    brief: Brief | None = None
    try:
        brief = Brief.model_validate(data, context={"now": dt.datetime.now(dt.UTC)})
    except ValidationError as err:
        later += [_pydantic_problem(e) for e in err.errors()]
    later += channel_problems(data)
    audience = data.get("audience")
    if isinstance(audience, dict):
        for key in ("include", "exclude"):
            if audience.get(key) is not None:
                try:
                    parse_rule(audience[key], f"audience.{key}", intake=True)
                except RuleProblems as rp:
                    later += rp.problems
    if brief is not None:
        if brief.schedule is not None and brief.send_at is not None:
            later.append("send_at: a scheduled campaign sends at each run; remove send_at or schedule")
        owner = brief.owner.strip().casefold()
        for i, stage in enumerate(brief.approvals):
            if owner in (a.strip().casefold() for a in stage.approvers):
                later.append(
                    f"approvals[{i}].approvers: the owner may not approve their own campaign; remove them"
                )
    problems.items += [p for p in later if not problems.covers(p)]
    if problems.items:
        raise BriefError(source, problems.in_document_order())
    assert brief is not None
    return brief


def channel_problems(data: dict[str, Any]) -> list[str]:
    """What the brief's channel needs of its content, and fields only the other channel takes."""
    channel = data.get("channel", "email")
    content = data.get("content")
    content = content if isinstance(content, dict) else None
    if channel == "email":
        out = [f"{k}: only for channel sms; remove it or set channel: sms" for k in SMS_FIELDS
               if data.get(k) is not None]
        if content is not None and content.get("text") is not None:
            out.append("content.text: only for channel sms; remove it (an e-mail's body is its template)")
        if content is not None and "subject" not in content:
            out.append("content.subject: required field is missing; add it")
        return out
    if channel != "sms" or content is None:
        return []
    text = content.get("text")
    if text is None:
        return ["content.text: required for channel sms; write the message text, "
                "e.g. 'Hi {first_name}, 20% off today' (docs/sms.md)"]
    if not isinstance(text, str):
        return []  # pydantic names the type
    out = []
    unknown = [f for f in placeholders(text) if f not in PERSONALISATION_FIELDS]
    if unknown:
        guess = did_you_mean(nearest(unknown[0], PERSONALISATION_FIELDS))
        out.append(f"content.text: {{{unknown[0]}}} is not a personalisation field"
                   f"{guess or '; use ' + ', '.join(PERSONALISATION_FIELDS)}")
    if data.get("quiet_hours_policy") == "defer" and data.get("send_at") is None:
        out.append("quiet_hours_policy: defer needs a fixed send_at (the deferred send times are "
                   "approved with the audience); set send_at, or use quiet_hours_policy: block")
    limit = data.get("max_segments")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1 else 1
    fixed = segments(PLACEHOLDER.sub("", text))
    if fixed > limit:
        out.append(f"content.text: the text alone is {fixed} SMS segments, over max_segments {limit}; "
                   "shorten it or raise max_segments (docs/sms.md#segments)")
    return out


def validate_brief(data: Any, source: str = "brief") -> Brief:
    """A Brief from already-parsed values (YAML or JSON), or BriefError listing every problem."""
    try:
        return _check(data, source, Problems())
    except BriefError:
        raise
    except Exception as exc:  # the boundary's promise: nothing else escapes
        raise _internal(source, exc) from exc


def parse_brief(data: bytes, source: str) -> Brief:
    """A Brief from a brief file's bytes, or BriefError listing every problem at once."""
    try:
        problems = Problems()
        text = decode_brief(data, problems, KNOWN_KEYS)
        if text is None:
            raise BriefError(source, problems.items)
        tree, complete = load_yaml(text, problems)
        if not _looks_like_a_brief(tree):
            if complete:
                raise _not_a_brief(source)
            raise BriefError(source, problems.items[-1:])  # why reading stopped; it quotes nothing
        if not complete:
            raise BriefError(source, problems.items)
        return _check(tree, source, problems)
    except BriefError:
        raise
    except Exception as exc:  # the boundary's promise: nothing else escapes
        raise _internal(source, exc) from exc


def load_brief(path: str | Path) -> Brief:
    """Read and validate a brief file (see parse_brief)."""
    source = Path(str(path)).name or str(path)
    problems = Problems()
    data = read_brief_file(path, problems)
    if data is None:
        raise BriefError(source, problems.items)
    return parse_brief(data, source)


def _internal(source: str, exc: Exception) -> BriefError:
    """An unforeseen failure inside intake, still as one safe line (a bug to report)."""
    return BriefError(source, [f"brief: intake could not check this brief ({type(exc).__name__}); "
                               "this is a campaignops bug: please report it with the file"])


def brief_json_schema() -> dict[str, Any]:
    """The published JSON Schema for brief files (docs/brief.schema.json)."""
    return with_rule_schema(Brief.model_json_schema(), "campaignops campaign brief")


def with_rule_schema(model_schema: dict[str, Any], title: str) -> dict[str, Any]:
    """A model's JSON Schema with every rule field pointing at the rule language's definition."""
    def point_at_rule(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("x-campaignops-rule"):
                return {"$ref": "#/$defs/Rule"}
            return {k: point_at_rule(v) for k, v in node.items()}
        if isinstance(node, list):
            return [point_at_rule(v) for v in node]
        return node

    schema: dict[str, Any] = point_at_rule(model_schema)
    schema.setdefault("$defs", {})["Rule"] = {k: v for k, v in RULE_JSON_SCHEMA.items() if k != "$id"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema
