"""Validity-preserving phone masking: a keyed, format-preserving permutation of numbers.

A valid number (``campaignops.sms.e164`` reads it for the customer's country) is masked
in E.164 space: the country calling code and the leading digits of the national number
are kept, every digit but the last :data:`SUBSCRIBER_DIGITS` (at most; the area code, the
mobile network prefix), and the subscriber digits go through a keyed decimal Feistel
permutation; the masked number is the *successor* of the original in that secret order
among the numbers of the same region and type (``phonenumbers``' own rules). A successor
map on a cyclic order is a bijection with no fixed point, so no two numbers collide (the
``duplicate_phone`` and suppression matches stay as they were) and no number maps to
itself. The result is written back into the original's shape (separators, national trunk
prefix, ``+``); if that shape cannot carry it, in E.164.

An invalid value stays invalid in the same shape: its first digits are kept and the rest
go through the same kind of permutation, walking on until the result is still invalid for
the customer's country. Letters (text where a number should be) become keyed letters.

A masked valid number is a real, dialable number in the same range, so it may be somebody's
real number: the sandbox refuses every ESP URL that is not the ESP sandbox, so nothing is
ever texted.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import phonenumbers
from phonenumbers import phonenumberutil as pu
from phonenumbers.phonemetadata import PhoneMetadata

from campaignops.errors import SandboxError

SUBSCRIBER_DIGITS = 7  # at most this many trailing digits are permuted; the rest is kept
_ROUNDS = 8
_MAX_STEPS = 200_000  # the successor walk's bound (a range this sparse is refused)
_CACHE_LIMIT = 200_000
_E164 = re.compile(r"\+[1-9][0-9]{1,16}")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_UNKNOWN = pu.PhoneNumberType.UNKNOWN
_regex: dict[str, re.Pattern[str]] = {}

Kind = tuple[str, int]  # (region, phonenumbers number type)


def _compiled(pattern: str) -> re.Pattern[str]:
    found = _regex.get(pattern)
    if found is None:
        found = _regex[pattern] = re.compile(pattern)
    return found


T = pu.PhoneNumberType
_ORDERED = (("premium_rate", T.PREMIUM_RATE), ("toll_free", T.TOLL_FREE), ("shared_cost", T.SHARED_COST),
            ("voip", T.VOIP), ("personal_number", T.PERSONAL_NUMBER), ("pager", T.PAGER), ("uan", T.UAN),
            ("voicemail", T.VOICEMAIL))
Desc = tuple[frozenset[int], re.Pattern[str]] | None
_plans: dict[int, tuple[Desc, list[tuple[Desc, int]], Desc, Desc, bool]] = {}


def _desc(desc: Any) -> Desc:
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern)


def _matches(nsn: str, desc: Desc) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    return (not lengths or len(nsn) in lengths) and pattern.fullmatch(nsn) is not None


def number_type(nsn: str, metadata: Any) -> int:
    """phonenumbers' _number_type_helper with its patterns compiled once per region."""
    plan = _plans.get(id(metadata))
    if plan is None:
        plan = _plans[id(metadata)] = (
            _desc(metadata.general_desc), [(_desc(getattr(metadata, a)), t) for a, t in _ORDERED],
            _desc(metadata.fixed_line), _desc(metadata.mobile), bool(metadata.same_mobile_and_fixed_line_pattern))
    general, ordered, fixed, mobile, same = plan
    if not _matches(nsn, general):
        return int(T.UNKNOWN)
    for desc, t in ordered:
        if _matches(nsn, desc):
            return int(t)
    if _matches(nsn, fixed):
        return int(T.FIXED_LINE_OR_MOBILE if same or _matches(nsn, mobile) else T.FIXED_LINE)
    if not same and _matches(nsn, mobile):
        return int(T.MOBILE)
    return int(T.UNKNOWN)


def kind(cc: int, nsn: str) -> Kind | None:
    """(region, number type) of +cc nsn when phonenumbers.is_valid_number holds, else None."""
    regions = pu.COUNTRY_CODE_TO_REGION_CODE.get(cc)
    if not regions:
        return None
    region: str | None = regions[0]
    if len(regions) > 1:
        region = None
        for candidate in regions:
            md = PhoneMetadata.metadata_for_region(candidate.upper(), None)
            if md is None:
                continue
            if md.leading_digits is not None:
                if _compiled(md.leading_digits).match(nsn):
                    region = candidate
                    break
            elif number_type(nsn, md) != _UNKNOWN:
                region = candidate
                break
    if region is None:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, region.upper())
    if metadata is None:
        return None
    found = number_type(nsn, metadata)
    return None if found == _UNKNOWN else (region, found)


def fast_parse(text: str) -> tuple[int, str] | None:
    """(calling code, national number) of a bare E.164 text as phonenumbers.parse reads it.

    None when the text is not bare E.164 or when phonenumbers might strip a national
    prefix from it: then the caller asks phonenumbers itself.
    """
    if not _E164.fullmatch(text):
        return None
    digits = text[1:]
    for width in (1, 2, 3):
        cc = int(digits[:width])
        if cc in pu.COUNTRY_CODE_TO_REGION_CODE:
            rest = digits[width:]
            break
    else:
        return None
    md = PhoneMetadata.metadata_for_region_or_calling_code(cc, pu.region_code_for_country_code(cc))
    if md is None or len(rest) < 2:
        return None
    prefix = md.national_prefix_for_parsing
    if prefix and _compiled(prefix).match(rest):
        return None
    return cc, rest


def parse(text: str, region: str | None) -> tuple[int, str, Kind] | None:
    """(calling code, national number, kind) of a valid number, else None (as e164 reads it)."""
    quick = fast_parse(text)
    if quick is not None:
        cc, nsn = quick
    else:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            return None
        cc, nsn = int(number.country_code or 0), str(pu.national_significant_number(number))
    found = kind(cc, nsn)
    return None if found is None else (cc, nsn, found)


class _DecimalFeistel:
    """A keyed permutation of 0 .. 10**digits - 1 (a balanced decimal Feistel network)."""

    def __init__(self, base: Any, tweak: bytes, digits: int) -> None:
        self._h = base.copy()
        self._h.update(len(tweak).to_bytes(2, "big") + tweak)
        self._digits = digits
        self._u = digits // 2  # the left half's digits (the right half has the rest)

    def _f(self, r: int, value: int, modulus: int) -> int:
        h = self._h.copy()
        h.update(bytes((r,)) + value.to_bytes(8, "big"))
        return int.from_bytes(h.digest(), "big") % modulus

    def forward(self, x: int) -> int:
        """The permuted value."""
        if self._digits == 1:
            return self._small()[x]
        la, lb = self._u, self._digits - self._u
        a, b = divmod(x, 10**lb)
        for r in range(_ROUNDS):
            a, b = b, (a + self._f(r, b, 10**la)) % 10**la
            la, lb = lb, la
        return int(a * 10**lb + b)

    def inverse(self, y: int) -> int:
        """The value that forward maps to y."""
        if self._digits == 1:
            return self._small().index(y)
        la, lb = self._u, self._digits - self._u  # after an even number of rounds, as at first
        a, b = divmod(y, 10**lb)
        for r in reversed(range(_ROUNDS)):
            la, lb = lb, la
            a, b = (b - self._f(r, a, 10**la)) % 10**la, a
        return int(a * 10**lb + b)

    def _small(self) -> list[int]:
        order = sorted(range(10), key=lambda d: self._f(0, d, 1 << 62))
        return [order.index(d) for d in range(10)]


class PhoneMasker:
    """The phone mapping for one derived key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        self._base = hashlib.blake2b(key=key[:64], digest_size=8)
        self._letters_key = hashlib.blake2b(key=key[:64], digest_size=32, person=b"letters")
        self._cache: dict[tuple[str, str | None], str] = {}

    def mask(self, value: str | None, country: str | None = None) -> str | None:
        """The masked value: valid stays valid (same region and type), invalid stays invalid."""
        if value is None:
            return None
        inner = value.strip()
        if not inner:
            return value
        lead = value[: len(value) - len(value.lstrip())]
        trail = value[len(value.rstrip()):]
        region = None
        if not inner.startswith("+") and country is not None and country.strip():
            region = country.strip().upper()
        cache_key = (inner, region)
        out = self._cache.get(cache_key)
        if out is None:
            parsed = parse(inner, region)
            out = self._valid(inner, region, *parsed) if parsed else self._invalid(inner, region)
            if out == inner:
                raise SandboxError("a phone number cannot be masked within its number range: "
                                   "it would stay as it is; nothing was kept")
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[cache_key] = out
        return f"{lead}{out}{trail}"

    # -- valid numbers ----------------------------------------------------------------
    def masked_number(self, cc: int, nsn: str, found: Kind) -> str:
        """The masked national number: the successor of nsn, in the keyed order, of its kind."""
        digits = max(1, min(SUBSCRIBER_DIGITS, len(nsn) - 2))
        prefix, subscriber = nsn[:-digits], int(nsn[-digits:])
        feistel = _DecimalFeistel(self._base, f"{cc}:{prefix}:{len(nsn)}".encode(), digits)
        size = 10**digits
        start = feistel.forward(subscriber)
        for step in range(1, min(size, _MAX_STEPS) + 1):
            candidate = f"{prefix}{feistel.inverse((start + step) % size):0{digits}d}"
            if kind(cc, candidate) == found:
                return candidate
        raise SandboxError("a phone number range is too sparse to mask within it; nothing was kept")

    def _valid(self, inner: str, region: str | None, cc: int, nsn: str, found: Kind) -> str:
        masked = self.masked_number(cc, nsn, found)
        e164 = f"+{cc}{masked}"
        if inner == f"+{cc}{nsn}":
            quick = fast_parse(e164)
            if quick == (cc, masked) or parse(e164, None) == (cc, masked, found):
                return e164
        positions = [i for i, ch in enumerate(inner) if "0" <= ch <= "9"]
        at = "".join(inner[i] for i in positions).find(nsn)
        if at >= 0:
            chars = list(inner)
            for i, digit in zip(positions[at:at + len(nsn)], masked, strict=True):
                chars[i] = digit
            written = "".join(chars)
            if parse(written, region) == (cc, masked, found):
                return written
        return e164  # a shape that cannot carry the masked number: E.164, just as valid

    # -- invalid values -----------------------------------------------------------------
    def _invalid(self, inner: str, region: str | None) -> str:
        positions = [i for i, ch in enumerate(inner) if "0" <= ch <= "9"]
        keep = min(3, max(0, len(positions) - 7))  # at least 7 digits permuted where there are
        free = positions[keep:]
        chars = list(inner)
        letters = self._letters_key.copy()
        letters.update(f"{region}|{inner}".encode("utf-8", "surrogatepass"))
        stream = letters.digest()
        for i, ch in enumerate(inner):
            if ch.isalpha():
                letter = _LETTERS[stream[i % len(stream)] % 26]
                chars[i] = letter.upper() if ch.isupper() else letter
        if not free:
            return "".join(chars)
        shape = "".join("#" if i in set(free) else ch for i, ch in enumerate(inner))
        feistel = _DecimalFeistel(self._base, f"invalid:{region}:{shape}".encode("utf-8", "surrogatepass"),
                                  len(free))
        size = 10 ** len(free)
        start = feistel.forward(int("".join(inner[i] for i in free)))
        for step in range(1, min(size, _MAX_STEPS) + 1):
            digits = f"{feistel.inverse((start + step) % size):0{len(free)}d}"
            for i, digit in zip(free, digits, strict=True):
                chars[i] = digit
            candidate = "".join(chars)
            if parse(candidate, region) is None:
                return candidate
        raise SandboxError("an invalid phone value cannot be masked into an invalid one; nothing was kept")
