"""Brief intake: the shared examples pass; bad briefs list every problem at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from campaignops.brief import brief_json_schema, load_brief, parse_brief, validate_brief
from campaignops.errors import BriefError
from tests.factories import brief_dict

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "examples" / "briefs"


@pytest.mark.parametrize("name", ["winback.yaml", "weekly-newsletter.yaml"])
def test_example_briefs_are_accepted_as_they_are(name: str) -> None:
    brief = load_brief(ROOT / "examples" / "briefs" / name)
    assert brief.campaign_id in ("winback-lapsed-customers", "weekly-newsletter")
    if SHARED.exists():  # the project's copies must stay identical to the shared ones
        assert (SHARED / name).read_text() == (ROOT / "examples" / "briefs" / name).read_text()


def test_many_problems_are_listed_in_one_message() -> None:
    bad = brief_dict(
        colour="red",
        send_at="2020-01-01T00:00:00Z",
        control_group={"percent": 60, "salt": "x"},
        cells=[{"name": "a", "percent": 50}, {"name": "b", "percent": 40}],
        audience={"include": {"all": [
            {"field": "shoe_size", "op": "eq", "value": 3},
            {"field": "lead_score", "op": "gt", "value": "abc"},
            {"field": "country", "op": "in", "value": []},
            {"field": "lead_score", "op": "between", "value": [50, 10]},
            {"field": "country", "op": "like", "value": "US"},
        ]}},
    )
    del bad["objective"]
    with pytest.raises(BriefError) as info:
        validate_brief(bad, "bad.yaml")
    text = str(info.value)
    expected = [
        "colour: unknown field", "objective: required field is missing", "send_at:", "in the past",
        "control_group.percent", "add to 90, not 100",
        "audience.include.all[0].field: unknown audience field 'shoe_size'",
        "audience.include.all[1].value: 'abc' is not a whole number",
        "audience.include.all[2].value: in needs a non-empty list",
        "audience.include.all[3].value: between bounds are reversed",
        "audience.include.all[4].op: unknown operator 'like'",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(info.value.problems) == 10


def test_owner_may_not_be_an_approver() -> None:
    with pytest.raises(BriefError, match="owner may not approve"):
        validate_brief(brief_dict(approvals=[{"stage": "qa", "approvers": ["Owner@example.com"]}]))


def test_sql_text_as_a_value_is_just_a_value() -> None:
    b = validate_brief(brief_dict(audience={"include": {
        "field": "region", "op": "eq", "value": "US'; DROP TABLE customers; --"}}))
    assert b.include_rule.value == "US'; DROP TABLE customers; --"  # type: ignore[union-attr]


def test_malformed_yaml_is_one_clear_problem(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("campaign_id: [unclosed\n")
    with pytest.raises(BriefError, match="not valid YAML at line"):
        load_brief(p)


def test_published_schema_matches_the_model_and_accepts_the_examples() -> None:
    import jsonschema

    published = json.loads((ROOT / "docs" / "brief.schema.json").read_text())
    assert published == brief_json_schema(), "run `make schema` to refresh docs/brief.schema.json"
    for name in ("winback.yaml", "weekly-newsletter.yaml"):
        data = yaml.safe_load((ROOT / "examples" / "briefs" / name).read_text())
        jsonschema.validate(json.loads(json.dumps(data, default=str)), published)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"campaign_id": "x"}, published)


def test_bytes_and_parsed_values_meet_the_same_checks(tmp_path: Path) -> None:
    bad = brief_dict(name="  ", kpi={"metric": "opens", "target": 1.5}, expected_audience={"min": 9, "max": 3},
                     audience={"include": {"field": "country", "op": "in", "value": ["Germany"]}})
    with pytest.raises(BriefError) as parsed:
        validate_brief(bad, "b.yaml")
    with pytest.raises(BriefError) as from_bytes:
        parse_brief(yaml.safe_dump(bad, sort_keys=False).encode(), "b.yaml")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(BriefError) as from_file:
        load_brief(path)
    assert parsed.value.problems == from_bytes.value.problems == from_file.value.problems == [
        "name: must not be blank; write a value",
        "audience.include.value[0]: 'Germany' is not an ISO 3166-1 alpha-2 country code; "
        "did you mean DE (Germany)?",
        "expected_audience: min 9 is above max 3; swap them",
    ]


def test_an_unforeseen_failure_is_still_one_brief_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import campaignops.brief as brief_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(brief_module, "clean_tree", broken)
    calls: tuple[Callable[[], object], ...] = (lambda: validate_brief(brief_dict()),
                                               lambda: parse_brief(b"campaign_id: x\n", "x.yaml"))
    for call in calls:
        with pytest.raises(BriefError) as info:
            call()
        assert info.value.problems == ["brief: intake could not check this brief (RuntimeError); this is "
                                       "a campaignops bug: please report it with the file"]
