"""Every malformed brief reported in issue 12 (and 21.6), each with the exact reply it gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaignops.brief import parse_brief
from campaignops.errors import BriefError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
W = (ROOT / "examples" / "briefs" / "winback.yaml").read_text()
N = (ROOT / "examples" / "briefs" / "weekly-newsletter.yaml").read_text()
COND = "      - {field: lifecycle_stage, op: eq, value: customer}\n"


def edit(old: str, new: str, base: str = W) -> str:
    """The example brief with one piece of text replaced."""
    assert old in base, old
    return base.replace(old, new, 1)


def cond(text: str) -> str:
    """The winback brief with its first condition replaced."""
    return edit(COND, f"      - {text}\n")


CASES: dict[str, str | bytes] = {
    # crashes
    "unhashable_field": cond("{field: [x], op: eq}"),
    "non_string_key_in_condition": cond("{field: lifecycle_stage, op: eq, value: customer, 5: x}"),
    "byte_ff": W.replace("Win back", "Win\xffback").encode("latin-1"),
    "utf16_file": W.encode("utf-16"),
    "latin1_file": W.replace("Win back", "Win back café").encode("latin-1"),
    "impossible_date": edit("send_at: null ", "send_at: 2027-02-30 "),
    "impossible_hour": edit("send_at: null ", "send_at: 2027-03-01T25:00:00Z "),
    "impossible_offset": edit("send_at: null ", "send_at: 2027-03-01T10:00:00+25:00 "),
    "tag_float": edit("target: 1500", "target: !!float abc"),
    "tag_int": edit("per_days: 7", "per_days: !!int abc"),
    "tag_timestamp": edit("send_at: null ", "send_at: !!timestamp x "),
    "nested_500": edit("name: Win back lapsed customers", "name: " + "[" * 500),
    "timezone_region": edit("timezone: America/New_York", "timezone: America", N),
    "timezone_5000": edit("timezone: America/New_York", "timezone: " + "A" * 5000, N),
    "between_nan": cond("{field: lead_score, op: between, value: [.nan, 1]}"),
    "send_at_9999": edit("send_at: null ", "send_at: 9999-12-31T23:59:59-01:00 "),
    # accepted wrongly
    "duplicate_approvals": W + "approvals:\n  - {stage: business, approvers: [blake.director@example.com]}\n",
    "cron_letters": edit('cron: "0 9 * * MON"', 'cron: "a b c d e"', N),
    "cron_99": edit('cron: "0 9 * * MON"', 'cron: "99 99 99 99 99"', N),
    "cron_hour_25": edit('cron: "0 9 * * MON"', 'cron: "0 25 * * *"', N),
    "min_above_max_mixed": edit("expected_audience: {min: 1000, max: 2000000}", "expected_audience: {min: 5000, max: 1000.0}"),
    "min_above_max": edit("expected_audience: {min: 1000, max: 2000000}", "expected_audience: {min: 5000, max: 1000}"),
    "target_nan": edit("target: 1500", "target: .nan"),
    "target_inf": edit("target: 1500", "target: .inf"),
    "rule_value_inf": cond("{field: lifetime_value, op: gt, value: -.inf}"),
    "ne_nan": cond("{field: lifetime_value, op: ne, value: .nan}"),
    "int_beyond_64_bits": cond("{field: customer_id, op: in, value: [1, 9223372036854775808]}"),
    "lead_score_beyond_column": cond("{field: lead_score, op: gt, value: 4294967296}"),
    # messages
    "custom_tag": edit("target: 1500", "target: !money 1500"),
    "field_op_and_value_wrong": cond("{field: lead_scor, op: greater, value: .nan}"),
    "key_with_newline": edit("approval_timeout_hours: 48", '"bad\\nkey": 1\napproval_timeout_hours: 48'),
    "ansi_in_key": edit("approval_timeout_hours: 48", '"\\e[2J\\e[HALL CHECKS PASSED": 1\napproval_timeout_hours: 48'),
    "surrogate_escape": cond('{field: region, op: eq, value: "\\ud800"}'),
    "any_of_1000": edit(COND, "      - any:\n" + "".join(f"        - {{field: customer_id, op: eq, value: {i}}}\n" for i in range(1000))),
    # issue 21.6
    "country_name": edit("value: [US, CA, GB]", "value: [US, Germany, UK]"),
    "lifecycle_typo": cond("{field: lifecycle_stage, op: gt, value: custmer}"),
    "lifecycle_ordering": cond("{field: lifecycle_stage, op: gt, value: lead}"),
    "loyalty_between": cond("{field: loyalty_tier, op: between, value: [silver, platinum]}"),
    "language_names": cond("{field: language, op: in, value: [English, EN, pt-BR, en_US]}"),
    "country_ordering": cond("{field: country, op: lt, value: M}"),
    "lead_score_domain": cond("{field: lead_score, op: gte, value: 101}"),
    "channel_typo": edit("channel: email", "channel: emial"),
    "norway": edit("value: [US, CA, GB]", "value: [US, NO]"),
    "yes_key": edit("approval_timeout_hours: 48", "yes: 1\napproval_timeout_hours: 48"),
    "blank_name": edit("name: Win back lapsed customers", "name: '   '"),
    "blank_approver": edit("approvers: [quinn.qa@example.com]", "approvers: ['  ']"),
    "approver_twice": edit("approvers: [quinn.qa@example.com]", "approvers: [quinn.qa@example.com, Quinn.QA@example.com]"),
    "subject_two_lines": edit('subject: "We miss you, {first_name}"', 'subject: "We miss you\\nBcc: all@example.com"'),
    "alias": edit("approvals:\n  - {stage: qa, approvers: [quinn.qa@example.com]}", "approvals:\n  - {stage: qa, approvers: &a [quinn.qa@example.com]}\n  - {stage: legal, approvers: *a}"),
    "merge_key": edit("frequency_cap: {max_messages: 2, per_days: 7}", "frequency_cap: {<<: {max_messages: 2}, per_days: 7}"),
    "second_document": W + "---\ncampaign_id: other\n",
    "send_at_epoch": edit("send_at: null ", "send_at: 1800000000 "),
    "unknown_field_typo": edit("approval_timeout_hours: 48", "aproval_timeout_hours: 48"),
    "control_in_value": edit('subject: "We miss you, {first_name}"', 'subject: "We miss you\\x07"'),
}


EXPECTED: dict[str, list[str]] = {
    'unhashable_field': ["audience.include.all[0].field: unknown audience field ['x']; use one of customer_id, email, phone, first_name, last_name, country, region, language, signup_date, lifecycle_stage, lead_score, loyalty_tier, lifetime_value, last_purchase_at, last_open_at, household_id, email_opt_in, sms_opt_in, scored…", 'audience.include.all[0].value: eq needs a value (use is_null to match missing values)'],
    'non_string_key_in_condition': ['audience.include.all[0]: key 5 at line 19 is read as a number, not text; quote it or fix the spelling'],
    'byte_ff': ['brief: byte 0xff at line 4, column 10 (in name) is not UTF-8 (Latin-1 or another encoding?); save the file as UTF-8'],
    'utf16_file': ['brief: the file is UTF-16 text; save it as UTF-8'],
    'latin1_file': ['brief: byte 0xe9 at line 4, column 19 (in name) is not UTF-8 (Latin-1 or another encoding?); save the file as UTF-8'],
    'impossible_date': ['send_at: 2027-02-30 at line 11 is not a real date or time (day is out of range for month); fix it'],
    'impossible_hour': ['send_at: 2027-03-01T25:00:00Z at line 11 is not a real date or time (hour must be in 0..23); fix it'],
    'impossible_offset': ['send_at: 2027-03-01T10:00:00+25:00 at line 11 is not a real date or time (out of range); fix it'],
    'tag_float': ['kpi.target: YAML tag !!float at line 9 is not allowed in a brief; write the value plainly (quote it to make it text)'],
    'tag_int': ['frequency_cap.per_days: YAML tag !!int at line 25 is not allowed in a brief; write the value plainly (quote it to make it text)'],
    'tag_timestamp': ['send_at: YAML tag !!timestamp at line 11 is not allowed in a brief; write the value plainly (quote it to make it text)'],
    'nested_500': ['name[0][0][0]: nested deeper than 40 levels at line 4; a brief is never this deep', "brief: not valid YAML at line 6, column 10: did not find expected ',' or ']'; fix the syntax"],
    'timezone_region': ["schedule.timezone: unknown time zone 'America'; 'America' is a region: name a zone in it, like America/Adak or America/Anchorage"],
    'timezone_5000': ['schedule.timezone: text of 5,000 characters at line 12; at most 4,000'],
    'between_nan': ['audience.include.all[0].value[0]: .nan is not a number; write a finite number'],
    'send_at_9999': ['send_at: 9999-12-31T23:59:59-01:00 is outside the years 1900-2199; use a real date'],
    'duplicate_approvals': ['approvals: duplicate key at line 35 (first at line 31); keep one of them'],
    'cron_letters': ["schedule.cron: 'a b c d e' is not a valid cron expression (Bad minute); use five fields like '0 9 * * MON'"],
    'cron_99': ["schedule.cron: '99 99 99 99 99' is not a valid cron expression (Bad minute); use five fields like '0 9 * * MON'"],
    'cron_hour_25': ["schedule.cron: '0 25 * * *' is not a valid cron expression (Bad hour); use five fields like '0 9 * * MON'"],
    'min_above_max_mixed': ['expected_audience.max: expected a whole number, not 1000.0'],
    'min_above_max': ['expected_audience: min 5,000 is above max 1,000; swap them'],
    'target_nan': ['kpi.target: .nan is not a number; write a finite number'],
    'target_inf': ['kpi.target: .inf is not a number; write a finite number'],
    'rule_value_inf': ['audience.include.all[0].value: -.inf is not a number; write a finite number'],
    'ne_nan': ['audience.include.all[0].value: .nan is not a number; write a finite number'],
    'int_beyond_64_bits': ['audience.include.all[0].value[1]: 9223372036854775808 is beyond the 64-bit integer range; use a smaller number'],
    'lead_score_beyond_column': ["audience.include.all[0].value: 4294967296 is beyond the range of lead_score's column (-2,147,483,648 to 2,147,483,647)"],
    'custom_tag': ['kpi.target: YAML tag !money at line 9 is not allowed in a brief; write the value plainly (quote it to make it text)'],
    'field_op_and_value_wrong': ["audience.include.all[0].field: unknown audience field 'lead_scor'; did you mean lead_score?", "audience.include.all[0].op: unknown operator 'greater'; did you mean gt?", 'audience.include.all[0].value: .nan is not a number; write a finite number'],
    'key_with_newline': ['bad\\nkey: unknown field; remove it or fix the spelling'],
    'ansi_in_key': ['\\x1b[2J\\x1b[HALL CHECKS PASSED: unknown field; remove it or fix the spelling'],
    'surrogate_escape': ['brief: not valid YAML at line 19, column 43: found invalid Unicode character escape code; fix the syntax'],
    'any_of_1000': ['audience.include: 1,002 conditions; at most 200 in one rule (use in for a list of values)', 'audience.include.all[0].any: 1,000 rules in one group; at most 100 (nest groups, or use in for a list of values)'],
    'country_name': ["audience.include.all[2].value[1]: 'Germany' is not an ISO 3166-1 alpha-2 country code; did you mean DE (Germany)?", "audience.include.all[2].value[2]: 'UK' is not an ISO 3166-1 alpha-2 country code; did you mean GB (United Kingdom)?"],
    'lifecycle_typo': ['audience.include.all[0].op: gt does not apply to lifecycle_stage: its values are categories, and gt would compare their spelling; list the ones you mean with in', "audience.include.all[0].value: 'custmer' is not a lifecycle_stage; did you mean customer? (one of suspect, prospect, lead, mql, sql, opportunity, customer, churned)"],
    'lifecycle_ordering': ['audience.include.all[0].op: gt does not apply to lifecycle_stage: its values are categories, and gt would compare their spelling; list the ones you mean, e.g. in [mql, sql, opportunity, customer, churned]'],
    'loyalty_between': ['audience.include.all[0].op: between does not apply to loyalty_tier: its values are categories, and between would compare their spelling; list the ones you mean, e.g. in [silver, gold, platinum]'],
    'language_names': ["audience.include.all[0].value[0]: 'English' is not an ISO 639-1 language code (like en, or en-US with a country); did you mean en (English)?", "audience.include.all[0].value[1]: 'EN' is not an ISO 639-1 language code (like en, or en-US with a country); did you mean en (English)?", "audience.include.all[0].value[3]: 'en_US' is not an ISO 639-1 language code (like en, or en-US with a country); did you mean en-US (English)?"],
    'country_ordering': ['audience.include.all[0].op: lt does not apply to country: codes have no order; use in or not_in with the codes you mean', "audience.include.all[0].value: 'M' is not an ISO 3166-1 alpha-2 country code"],
    'lead_score_domain': ["audience.include.all[0].value: 101 is outside lead_score's range 0-100 in the data model"],
    'channel_typo': ["channel: 'emial' is not allowed here; did you mean email? (use 'email' or 'sms')"],
    'norway': ["audience.include.all[2].value[1]: false is read as true/false by YAML (unquoted yes, no, on, off); quote it to compare with text, e.g. 'NO'"],
    'yes_key': ['brief: key yes at line 34 is read as true or false, not text; quote it or fix the spelling'],
    'blank_name': ['name: must not be blank; write a value'],
    'blank_approver': ['approvals[0].approvers[0]: must not be blank; write a value'],
    'approver_twice': ["approvals[0].approvers: 'quinn.qa@example.com' is listed twice; list each approver once"],
    'subject_two_lines': ['content.subject: must be one line (no line breaks or tabs)'],
    'alias': ['approvals[1].approvers: YAML alias *a at line 33 is not allowed in a brief; write the value out in full'],
    'merge_key': ['frequency_cap: merge key << at line 25 is not allowed in a brief; write the fields out'],
    'second_document': ['brief: a second YAML document starts at line 35; a brief is one document (remove the ---)'],
    'send_at_epoch': ['send_at: expected a timestamp like 2027-03-01T14:00:00Z, not 1800000000'],
    'unknown_field_typo': ['aproval_timeout_hours: unknown field; did you mean approval_timeout_hours?'],
    'control_in_value': ['content.subject: text has the control character \\x07; remove it'],
}


def test_every_case_has_its_expected_reply() -> None:
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_brief_gets_its_exact_reply(name: str) -> None:
    data = CASES[name]
    with pytest.raises(BriefError) as info:
        parse_brief(data.encode() if isinstance(data, str) else data, f"{name}.yaml")
    assert info.value.problems == EXPECTED[name]
    assert str(info.value).startswith(f"brief {name}.yaml has {len(EXPECTED[name])} problem")
