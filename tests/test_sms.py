"""SMS: segment counts, phone normalisation and the brief's SMS fields at intake."""

from __future__ import annotations

import pytest

from campaignops.brief import validate_brief
from campaignops.errors import BriefError
from campaignops.sms import e164, is_gsm7, placeholders, render, segments
from tests.factories import brief_dict

pytestmark = pytest.mark.unit


def sms_brief(**overrides: object) -> dict[str, object]:
    """A valid SMS brief as parsed YAML."""
    base = brief_dict(channel="sms", content={"template_id": "flash", "text": "Hi {first_name}, 20% off"})
    base.update(overrides)
    return base


@pytest.mark.parametrize(("text", "want"), [
    ("", 0),
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("€" * 80, 1), ("€" * 81, 2),  # an extension character takes two septets
    ("{" * 80, 1), ("{" * 80 + "a", 2),
    ("ç" * 70, 1), ("ç" * 71, 2), ("ç" * 134, 2), ("ç" * 135, 3),  # ç is not GSM-7 (Ç is)
    ("Ç" * 160, 1),
    ("a" * 159 + "😀", 3),  # one emoji: UCS-2, 161 code units -> 3 parts of 67
    ("😀" * 35, 1), ("😀" * 36, 2),
])
def test_segments(text: str, want: int) -> None:
    assert segments(text) == want


def test_gsm7_alphabet_edges() -> None:
    assert is_gsm7("Hello @£$ ÄÖÑÜ ¿¡ [] {} €")
    assert not is_gsm7("naïve") and not is_gsm7("“quotes”")


def test_placeholders_and_render() -> None:
    text = "Hi {first_name}, {first_name}! Tier {loyalty_tier} {unknown"
    assert placeholders(text) == ["first_name", "loyalty_tier"]
    assert render(text, {"first_name": "Ann"}) == "Hi Ann, Ann! Tier {loyalty_tier} {unknown"


@pytest.mark.parametrize(("phone", "country", "want"), [
    ("(415) 555-2671", "US", "+14155552671"),
    ("415.555.2671", "us", "+14155552671"),
    ("+44 20 7946 0958", None, "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("0044 20 7946 0958", "GB", "+442079460958"),
    ("0151 12345678", "DE", "+4915112345678"),
    ("+1 415 555 2671", "DE", "+14155552671"),  # an international number ignores the country
    ("12", "US", None),
    ("020 7946 0958", None, None),  # national format, no country: cannot be read
    ("020 7946 0958", "ZZ", None),
    ("not a phone", "US", None),
    ("   ", "US", None),
    (None, "US", None),
])
def test_e164(phone: str | None, country: str | None, want: str | None) -> None:
    assert e164(phone, country) == want


def test_sms_brief_accepted_with_defaults() -> None:
    brief = validate_brief(sms_brief())
    assert brief.channel == "sms" and brief.segment_limit == 1 and brief.quiet_policy == "block"
    brief = validate_brief(sms_brief(max_segments=2, quiet_hours={"start": "21:00", "end": "08:00"},
                                     quiet_hours_policy="defer", send_at="2027-03-02T15:00:00Z"))
    assert brief.segment_limit == 2 and brief.quiet_hours is not None and brief.quiet_hours.start == "21:00"


def test_defer_needs_a_fixed_send_at() -> None:
    (line,) = problems(sms_brief(quiet_hours={"start": "21:00", "end": "08:00"}, quiet_hours_policy="defer"))
    assert line.startswith("quiet_hours_policy: defer needs a fixed send_at")


def test_email_digest_is_unchanged_by_the_sms_fields() -> None:
    # the digest of an e-mail brief from before SMS existed (approvals are bound to it)
    assert validate_brief(brief_dict()).digest() == (
        "9419abb9360c1e3260714039e3556ebd2c82682f211473c2ef88f64a558c7968")


def problems(data: dict[str, object]) -> list[str]:
    """The intake problems of a brief."""
    with pytest.raises(BriefError) as err:
        validate_brief(data)
    return err.value.problems


def test_sms_without_text_is_one_clear_line() -> None:
    assert problems(sms_brief(content={"template_id": "flash"})) == [
        "content.text: required for channel sms; write the message text, "
        "e.g. 'Hi {first_name}, 20% off today' (docs/sms.md)"]


def test_text_over_max_segments_is_rejected() -> None:
    (line,) = problems(sms_brief(content={"template_id": "t", "text": "x" * 161}))
    assert line.startswith("content.text: the text alone is 2 SMS segments, over max_segments 1")
    validate_brief(sms_brief(content={"template_id": "t", "text": "x" * 161}, max_segments=2))


def test_unknown_placeholder_is_named() -> None:
    (line,) = problems(sms_brief(content={"template_id": "t", "text": "Hi {frist_name}"}))
    assert line == "content.text: {frist_name} is not a personalisation field; did you mean first_name?"


def test_bad_quiet_hours_and_policy() -> None:
    got = problems(sms_brief(quiet_hours={"start": "25:00", "end": "08:00"}, quiet_hours_policy="later"))
    assert got[0] == "quiet_hours.start: '25:00' is not valid here; use a 24-hour time like 21:00"
    assert got[1].startswith("quiet_hours_policy: 'later' is not allowed here")
    (same,) = problems(sms_brief(quiet_hours={"start": "21:00", "end": "21:00"}))
    assert same.startswith("quiet_hours: start and end are both 21:00")


def test_sms_fields_on_an_email_brief_are_named() -> None:
    got = problems(brief_dict(max_segments=2, content={"template_id": "t", "subject": "s", "text": "x"}))
    assert got == ["content.text: only for channel sms; remove it (an e-mail's body is its template)",
                   "max_segments: only for channel sms; remove it or set channel: sms"]


def test_email_still_needs_a_subject() -> None:
    assert problems(brief_dict(content={"template_id": "t"})) == [
        "content.subject: required field is missing; add it"]


def test_the_example_sms_brief_is_accepted() -> None:
    from pathlib import Path

    from campaignops.brief import load_brief

    brief = load_brief(Path(__file__).resolve().parents[1] / "examples" / "briefs" / "sms-flash-sale.yaml")
    assert brief.channel == "sms" and brief.quiet_hours is not None and brief.content.text is not None
    assert segments(brief.content.text) <= brief.segment_limit
