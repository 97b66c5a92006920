"""The data model's domains: the values a brief may compare a field with.

The enumerations come from the warehouse data model (the input contract);
country and language codes from ISO 3166-1 alpha-2 and ISO 639-1 through
pycountry. Each check returns a problem naming the nearest valid value, or None.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import lru_cache

from campaignops.textsafe import show

LIFECYCLE_STAGES = (
    "suspect", "prospect", "lead", "mql", "sql", "opportunity", "customer", "churned",
)
LOYALTY_TIERS = ("none", "bronze", "silver", "gold", "platinum", "staff")
CHANNELS = ("email", "sms")  # suppressions.channel
SUPPRESSION_REASONS = ("unsubscribe", "hard_bounce", "complaint", "legal_hold", "do_not_contact")
LEAD_SCORE = (0, 100)

# Common names that are not the ISO code, pointed at the code they mean.
_COUNTRY_ALIASES = {"UK": "GB", "EL": "GR", "EN": "GB"}
_LONGEST_GUESS = 64  # longer input is not worth a suggestion


def nearest(value: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a mistyped value (same letters in another case first)."""
    options = list(choices)
    if len(value) > _LONGEST_GUESS:
        return None
    folded = {c.casefold(): c for c in options}
    if value.casefold() in folded:
        return folded[value.casefold()]
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(value.casefold(), list(folded), n=1, cutoff=0.6)
        close = [folded[c] for c in close]
    return close[0] if close else None


def did_you_mean(guess: str | None, label: str | None = None) -> str:
    """'; did you mean X?' (or 'X (label)?') for a suggestion, or nothing."""
    if not guess:
        return ""
    return f"; did you mean {guess} ({label})?" if label else f"; did you mean {guess}?"


def enum_problem(field: str, value: str, allowed: tuple[str, ...], suggest: bool = True) -> str | None:
    """Why `value` is not one of the enumeration `allowed`, or None."""
    if value in allowed:
        return None
    guess = nearest(value, allowed) if suggest else None
    return f"{show(value)} is not a {field}{did_you_mean(guess)} (one of {', '.join(allowed)})"


@lru_cache(maxsize=1)
def _countries() -> dict[str, str]:
    import pycountry

    return {c.alpha_2: c.name for c in pycountry.countries}


@lru_cache(maxsize=1)
def _languages() -> dict[str, str]:
    import pycountry

    return {lang.alpha_2: lang.name for lang in pycountry.languages if hasattr(lang, "alpha_2")}


@lru_cache(maxsize=512)
def _code_for(value: str, kind: str) -> str | None:
    """The code a country or language name (or another ISO form of it) stands for."""
    import pycountry

    table = _countries() if kind == "countries" else _languages()
    if len(value) > _LONGEST_GUESS:
        return None
    try:
        found = getattr(pycountry, kind).lookup(value)
    except LookupError:
        found = None
    code = getattr(found, "alpha_2", None)
    if code in table:
        return str(code)
    by_name = {name: code for code, name in table.items()}
    name = nearest(value, by_name)
    return by_name[name] if name else {c.casefold(): c for c in table}.get(value.casefold())


def country_problem(value: str, suggest: bool = True) -> str | None:
    """Why `value` is not an ISO 3166-1 alpha-2 country code, or None."""
    table = _countries()
    if value in table:
        return None
    guess = (_COUNTRY_ALIASES.get(value.upper()) or _code_for(value, "countries")) if suggest else None
    label = table[guess] if guess else None
    return f"{show(value)} is not an ISO 3166-1 alpha-2 country code{did_you_mean(guess, label)}"


def language_problem(value: str, suggest: bool = True) -> str | None:
    """Why `value` is not an ISO 639-1 language code (optionally -CC for a country), or None."""
    table, countries = _languages(), _countries()
    lang, sep, country = value.partition("-")
    if lang in table and (not sep or country in countries):
        return None
    guess: str | None = None
    if suggest:
        lang, sep, country = value.replace("_", "-").partition("-")
        guess = _code_for(lang, "languages")
        if guess and sep and country.upper() in countries:
            guess = f"{guess}-{country.upper()}"
    label = table[guess[:2]] if guess else None
    return (f"{show(value)} is not an ISO 639-1 language code (like en, or en-US with a "
            f"country){did_you_mean(guess, label)}")
