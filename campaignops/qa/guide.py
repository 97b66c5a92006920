"""What a failed QA check means and what to do about it, with the page that explains it.

One entry per check of the audience suite (a per-cell or per-field check such as
``cell_share[0]`` uses its base name). QA's blocking message is built from these, so the
person reading it learns why the run stopped and what to change, not only a number.
"""

from __future__ import annotations

DOCS = "docs/qa.md"

# check -> (what a failure means, what to do)
GUIDE: dict[str, tuple[str, str]] = {
    "outcome_values_known": (
        "an audience row has an outcome campaignops never writes",
        "something other than segmentation wrote co_audience: start a new run"),
    "no_suppressed_recipient": (
        "a recipient is on a suppression list",
        "check that the suppressions table is current and start a new run"),
    "no_unconsented_recipient": (
        "a recipient has not opted in to email",
        "check the customers' email_opt_in and start a new run"),
    "no_recipient_over_frequency_cap": (
        "a recipient already had the cap's number of messages in its window",
        "check contact_history is current (another tool may have sent since) and start a new run"),
    "unique_customer_among_recipients": (
        "a customer would get the email twice",
        "check the customers table for duplicated ids and start a new run"),
    "unique_address_among_recipients": (
        "an address would get the email twice (a seed may share a customer's address)",
        "remove the duplicate from seed_recipients or customers and start a new run"),
    "address_key_normalised": (
        "a recipient's address key is not its normalised address, so de-duplication and "
        "suppression could miss it", "start a new run; if it recurs, report it as a bug"),
    "valid_address_format": (
        "a recipient address is not a valid email address",
        "fix the address in customers or seed_recipients and start a new run"),
    "required_field_present": (
        "a recipient lacks a personalisation field the template needs",
        "give the field a fallback in content.fallbacks, or fill it in customers"),
    "offer_valid_at_send_time": (
        "an offer does not exist or is not valid at the send time",
        "pick a current offer in the brief's cells, or move send_at"),
    "cell_and_offer_match_brief": (
        "a recipient's cell and offer are not a pair the brief names",
        "start a new run; if it recurs, report it as a bug"),
    "send_rows_have_a_cell": (
        "a recipient has no test cell", "check that the cells' percents add up to 100"),
    "control_share": (
        "the holdout is not the brief's share of the eligible, so treated and holdout are no "
        "longer comparable and the measured lift would be off",
        "check control_group.percent, and whether anything removes people from one side only "
        "(the frequency cap counts the holdout's would-be sends since issue 21; an older "
        "contact history written without them can skew the first runs after an upgrade)"),
    "cell_share": (
        "a test cell is not its share of the recipients, so the cells cannot be compared",
        "check the cells' percents; a small audience widens the tolerance"),
    "audience_size_in_expected_range": (
        "the number of recipients is outside the brief's expected_audience",
        "check the rules (`campaignops brief check --count BRIEF`) or widen expected_audience"),
    "size_within_drift_of_recent_runs": (
        "the audience moved more than drift_tolerance_percent from the campaign's recent runs",
        "look at the waterfall for the step that moved; approve it if the change is expected"),
    "excluded_rows_have_reason": (
        "an excluded row has no reason, a gap in the audit trail",
        "start a new run; if it recurs, report it as a bug"),
}


SMS_DOCS = "docs/sms.md"
# The SMS suite's own checks (expectations/audience_sms.json and campaignops.qa.sms); the
# others it shares with the e-mail suite.
_RERUN = "start a new run; if it recurs, report it as a bug"
SMS_GUIDE: dict[str, tuple[str, str]] = {
    "no_sms_suppressed_recipient": ("a recipient's number is on an sms suppression list",
                                    "check the suppressions (numbers in international form), start a new run"),
    "no_sms_unconsented_recipient": ("a recipient has not opted in to SMS",
                                     "check the customers' sms_opt_in and start a new run"),
    "unique_phone_among_recipients": ("a phone number would get the message twice", _RERUN),
    "phone_normalised": ("a recipient's number is not the E.164 number segmentation normalised, so "
                         "de-duplication and suppression could miss it", _RERUN),
    "valid_phone_format": ("a recipient's number is not E.164", _RERUN),
    "no_recipient_in_quiet_hours": ("the send time reaches recipients in their quiet hours (or in a country "
                                    "with no known time zone)",
                                    "move send_at, set quiet_hours_policy: defer, or fix the customers' country"),
    "longest_message_within_max_segments": ("the text with the audience's longest personalisation values takes "
                                            "more SMS segments than max_segments",
                                            "shorten the text or the field's fallback, or raise max_segments"),
}


def base_name(check: str) -> str:
    """The suite's check name without its per-cell or per-field suffix."""
    return check.split("[", 1)[0]


def explain(check: str) -> str:
    """'what it means; what to do (docs link)' for a check, or just the docs link."""
    name = base_name(check)
    link = f"{SMS_DOCS if name in SMS_GUIDE else DOCS}#{name}"
    entry = GUIDE.get(name) or SMS_GUIDE.get(name)
    if entry is None:
        return f"see {link}"
    means, todo = entry
    return f"{means}; {todo} ({link})"
