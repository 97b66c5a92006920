"""Values checked against the data model's domains at intake, with the nearest valid value."""

from __future__ import annotations

from typing import Any

import pytest

from campaignops import domains
from campaignops.brief import validate_brief
from campaignops.errors import BriefError
from campaignops.rules import Cond, parse_rule
from tests.factories import brief_dict

pytestmark = pytest.mark.unit


def problems(rule: dict[str, Any]) -> list[str]:
    """The intake problems of an include rule (none: an empty list)."""
    try:
        validate_brief(brief_dict(audience={"include": rule}))
    except BriefError as err:
        return err.problems
    return []


@pytest.mark.parametrize("field, value", [
    ("country", "US"), ("country", "DE"), ("country", "XK" if "XK" in domains._countries() else "GB"),
    ("language", "en"), ("language", "pt-BR"), ("language", "fr-CA"),
    ("lifecycle_stage", "customer"), ("loyalty_tier", "staff"),
    ("region", "Île-de-France"), ("region", "Germany"),  # region stays free text
])
def test_valid_domain_values_are_accepted(field: str, value: str) -> None:
    assert problems({"field": field, "op": "eq", "value": value}) == []


@pytest.mark.parametrize("field, value, problem", [
    ("country", "Germany", "'Germany' is not an ISO 3166-1 alpha-2 country code; did you mean DE (Germany)?"),
    ("country", "us", "'us' is not an ISO 3166-1 alpha-2 country code; did you mean US (United States)?"),
    ("country", "USA", "'USA' is not an ISO 3166-1 alpha-2 country code; did you mean US (United States)?"),
    ("country", "Grmany", "'Grmany' is not an ISO 3166-1 alpha-2 country code; did you mean DE (Germany)?"),
    ("country", "ZZ", "'ZZ' is not an ISO 3166-1 alpha-2 country code"),
    ("language", "fra", "'fra' is not an ISO 639-1 language code (like en, or en-US with a country); "
                        "did you mean fr (French)?"),
    ("language", "en-XX", "'en-XX' is not an ISO 639-1 language code (like en, or en-US with a country); "
                          "did you mean en (English)?"),
    ("lifecycle_stage", "custmer", "'custmer' is not a lifecycle_stage; did you mean customer? (one of "
                                   "suspect, prospect, lead, mql, sql, opportunity, customer, churned)"),
    ("lifecycle_stage", "Customer", "'Customer' is not a lifecycle_stage; did you mean customer? (one of "
                                    "suspect, prospect, lead, mql, sql, opportunity, customer, churned)"),
    ("loyalty_tier", "platnum", "'platnum' is not a loyalty_tier; did you mean platinum? (one of none, "
                                "bronze, silver, gold, platinum, staff)"),
])
def test_values_outside_the_domain_name_the_nearest(field: str, value: str, problem: str) -> None:
    assert problems({"field": field, "op": "ne", "value": value}) == [f"audience.include.value: {problem}"]
    assert problems({"field": field, "op": "not_in", "value": [value]}) == [
        f"audience.include.value[0]: {problem}"]


@pytest.mark.parametrize("op, value, suggestion", [
    ("gt", "lead", "in [mql, sql, opportunity, customer, churned]"),
    ("gte", "customer", "in [customer, churned]"),
    ("lt", "lead", "in [suspect, prospect]"),
    ("lte", "suspect", "in [suspect]"),
    ("between", ["mql", "opportunity"], "in [mql, sql, opportunity]"),
])
def test_ordering_a_category_is_refused_with_the_list_it_would_mean(op: str, value: Any,
                                                                     suggestion: str) -> None:
    assert problems({"field": "lifecycle_stage", "op": op, "value": value}) == [
        f"audience.include.op: {op} does not apply to lifecycle_stage: its values are categories, and "
        f"{op} would compare their spelling; list the ones you mean, e.g. {suggestion}"]


def test_ordering_codes_is_refused_and_free_text_keeps_its_order() -> None:
    assert problems({"field": "language", "op": "gte", "value": "en"}) == [
        "audience.include.op: gte does not apply to language: codes have no order; use in or not_in "
        "with the codes you mean"]
    assert problems({"field": "region", "op": "gt", "value": "M"}) == []
    assert problems({"field": "email_opt_in", "op": "gt", "value": True}) == [
        "audience.include.op: gt does not apply to email_opt_in (true or false); use eq or ne"]


def test_lead_score_is_0_to_100_and_text_fits_its_column() -> None:
    assert problems({"field": "lead_score", "op": "between", "value": [-1, 100]}) == [
        "audience.include.value[0]: -1 is outside lead_score's range 0-100 in the data model"]
    assert problems({"field": "first_name", "op": "eq", "value": "x" * 101}) == [
        "audience.include.value: 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx' is 101 "
        "characters, longer than first_name can be (100); it could never match"]


def test_a_stored_brief_is_reparsed_as_it_was_accepted() -> None:
    # Domain checks are intake's judgement: a brief stored before them still reloads.
    rule = parse_rule({"field": "country", "op": "eq", "value": "Germany"})
    assert rule == Cond("country", "eq", "Germany")
    with pytest.raises(Exception, match="ISO 3166"):
        parse_rule({"field": "country", "op": "eq", "value": "Germany"}, intake=True)


def test_suggestions_stop_after_fifty() -> None:
    values = [f"Q{i:03d}" for i in range(60)] + ["Germany"]
    found = problems({"field": "country", "op": "in", "value": values})
    assert len(found) == 61 and not any("did you mean" in p for p in found[50:])
    assert found[-1] == "audience.include.value[60]: 'Germany' is not an ISO 3166-1 alpha-2 country code"


def test_brief_level_enumerations_suggest_too() -> None:
    with pytest.raises(BriefError) as info:
        validate_brief(brief_dict(standing_approval="alowed", channel="smss",
                                  content={"template_id": "t", "subject": "s", "required_fields": ["firstname"]}))
    assert info.value.problems == [
        "channel: 'smss' is not allowed here; did you mean sms? (use 'email' or 'sms')",
        "content.required_fields[0]: 'firstname' is not allowed here; did you mean first_name? "
        "(use 'first_name', 'last_name', 'language', 'country' or 'loyalty_tier')",
        "standing_approval: 'alowed' is not allowed here; did you mean allowed? (use 'allowed' or 'not_allowed')",
    ]


def test_the_data_model_enumerations() -> None:
    assert domains.CHANNELS == ("email", "sms")
    assert domains.SUPPRESSION_REASONS == ("unsubscribe", "hard_bounce", "complaint", "legal_hold", "do_not_contact")
    from campaignops.segmentation import SUPPRESSION_REASONS
    assert set(SUPPRESSION_REASONS) == set(domains.SUPPRESSION_REASONS)
