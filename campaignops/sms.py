"""SMS text and numbers: segment counts (GSM-7 / UCS-2), placeholders, E.164 normalisation.

Plain functions, shared by intake, segmentation and QA: one normalisation of a
phone number, one way to count the segments a text is billed as.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The GSM 03.38 default alphabet (one septet each) and its extension table (two septets:
# the escape and the character). Any other character makes the whole message UCS-2.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
MAX_TEXT = 1600  # ten GSM-7 parts: what a brief may hold at all
# {first_name}: a personalisation field in an SMS text.
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def is_gsm7(text: str) -> bool:
    """Whether every character of text is in the GSM-7 alphabet (basic or extension)."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _ucs2_units(text: str) -> int:
    """UTF-16 code units: a character outside the BMP (an emoji) takes two."""
    return len(text.encode("utf-16-le")) // 2


def segments(text: str) -> int:
    """How many SMS segments text is sent as (GSM-7 160/153, else UCS-2 70/67); 0 if empty."""
    if not text:
        return 0
    if is_gsm7(text):
        units, single, part = sum(2 if ch in GSM7_EXTENSION else 1 for ch in text), GSM7_SINGLE, GSM7_PART
    else:
        units, single, part = _ucs2_units(text), UCS2_SINGLE, UCS2_PART
    if units <= single:
        return 1
    return -(-units // part)


def placeholders(text: str) -> list[str]:
    """The field names a text personalises with, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def render(text: str, values: Mapping[str, str]) -> str:
    """The text with each {field} replaced by its value (unknown fields left as written)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def e164(phone: str | None, country: str | None) -> str | None:
    """The number in E.164 (+14155550123) for the customer's country, or None if it is not one.

    A number written with a leading + (or 00) needs no country; otherwise the
    customer's ISO 3166 country decides how it is read. Numbers that parse but
    are not valid for their region are None as well.
    """
    import phonenumbers

    if phone is None or not phone.strip():
        return None
    region = country.strip().upper() if country and country.strip() else None
    try:
        number = phonenumbers.parse(phone.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
