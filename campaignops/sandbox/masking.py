"""Keyed, deterministic masking of one warehouse value at a time (no database here).

Every mapping is a function of the secret key and the value alone: the same key always
gives the same output, another key another mapping. Sub-keys are derived per purpose from
the secret (HMAC-SHA256), so the e-mail, name, phone and id mappings are independent.

- E-mail: mapped from its normalised form (``lower(trim())`` as segmentation computes
  it), so an address, its suppression entry, a household's shared address and a seed
  address still match. A valid address stays valid (``campaignops.sql`` ADDRESS_REGEX):
  ``u<20 hex of HMAC>@<domain>``, the domain kept when at least K customers share it,
  else :data:`RESERVED_DOMAIN`. An invalid address stays invalid (no ``@``).
- Names: a dictionary name (invented syllable names, not real ones) chosen by keyed hash.
- Phones (``campaignops.sandbox.phones``): a number valid for the customer's country maps
  to another valid one of the same region and type (calling code and leading digits kept,
  the subscriber digits through a keyed permutation, a bijection with no fixed point), in
  the original's shape; an invalid value stays invalid in its shape. So the SMS waterfall
  (invalid phones, suppressions, duplicates) counts as in production; the price is that a
  masked number may be somebody's real number (the sandbox hands off to the ESP sandbox
  only, so nothing is ever texted).
- Ids: a keyed permutation of 0 .. 2**52-1 (a 4-round Feistel network with AES-256
  rounds, a column at a time), unique by construction.

Null stays null; empty or blank stays exactly as it was.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from campaignops.errors import SandboxError
from campaignops.sandbox.phones import PhoneMasker
from campaignops.sql import sqlite_valid_address

MASKING_VERSION = "2"  # 2: phones keep their validity (campaignops.sandbox.phones)
RESERVED_DOMAIN = "sandbox.invalid"  # RFC 2606: .invalid is never a real domain
ID_BITS = 52  # ids 0 .. 2**52-1 (JSON-safe); the permutation maps the range onto itself
_HALF = ID_BITS // 2
_HALF_MASK = (1 << _HALF) - 1
_ROUNDS = 4
_CACHE_LIMIT = 200_000  # distinct names remembered per mapping (memory stays bounded)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Invented names: onset + vowel + onset + vowel + ending, read as mixed-radix digits.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s",
           "st", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_FIRST_ENDINGS = ("n", "l", "ra", "na", "th", "x", "s", "ne", "lo", "rin")
_LAST_ENDINGS = ("vek", "dorn", "mir", "ski", "tan", "wel", "berg", "holt", "quist", "ridge")
DICTIONARY_SIZE = len(_ONSETS) ** 2 * len(_VOWELS) ** 2 * len(_FIRST_ENDINGS)


def normalise_address(value: str) -> str:
    """The address key segmentation uses: ``lower(trim(value))`` (SQL trims spaces only)."""
    return value.strip(" ").translate(_ASCII_LOWER)


def address_domain(normalised: str) -> str | None:
    """The domain of a valid normalised address, else None."""
    if not sqlite_valid_address(normalised):
        return None
    return normalised.rsplit("@", 1)[1]


def dictionary_name(index: int, endings: tuple[str, ...]) -> str:
    """The invented name at ``index`` of the dictionary with these endings."""
    parts = []
    for radix in (_ONSETS, _VOWELS, _ONSETS, _VOWELS, endings):
        index, digit = divmod(index, len(radix))
        parts.append(radix[digit])
    return "".join(parts).capitalize()


class Masker:
    """The masking functions for one secret key and one set of kept e-mail domains."""

    def __init__(self, key: bytes, kept_domains: Collection[str]) -> None:
        if not key:
            raise SandboxError("the sandbox key is empty: set a long random key")
        self._email_key = self._derive(key, b"email")
        self._phones = PhoneMasker(self._derive(key, b"phone"))
        self._first_key = self._derive(key, b"first_name")
        self._last_key = self._derive(key, b"last_name")
        self._id_key = self._derive(key, b"id")
        self.kept_domains = frozenset(kept_domains)
        self._names: dict[tuple[int, str], str] = {}

    @staticmethod
    def _derive(key: bytes, purpose: bytes) -> bytes:
        return hmac.digest(key, b"campaignops-sandbox/" + MASKING_VERSION.encode() + b"/" + purpose,
                           "sha256")

    # -- e-mail ---------------------------------------------------------------------
    def email(self, value: str | None) -> str | None:
        """The masked address (valid stays valid, invalid stays invalid; null/blank as is)."""
        if value is None:
            return None
        norm = normalise_address(value)
        if not norm:
            return value  # empty or blank: nothing to hide, and "missing" stays missing
        digest = hmac.digest(self._email_key, norm.encode("utf-8", "surrogatepass"), "sha256")
        local = "u" + digest[:10].hex()
        domain = address_domain(norm)
        if domain is None:
            return f"invalid.{local}"  # no "@": as invalid as the original
        return f"{local}@{domain if domain in self.kept_domains else RESERVED_DOMAIN}"

    # -- names ----------------------------------------------------------------------
    def first_name(self, value: str | None) -> str | None:
        """A first name from the invented dictionary (null, empty and blank as they are)."""
        return self._name(value, 0, self._first_key, _FIRST_ENDINGS)

    def last_name(self, value: str | None) -> str | None:
        """A last name from the invented dictionary (null, empty and blank as they are)."""
        return self._name(value, 1, self._last_key, _LAST_ENDINGS)

    def _name(self, value: str | None, which: int, key: bytes, endings: tuple[str, ...]) -> str | None:
        if value is None or not value.strip():
            return value
        norm = value.strip().casefold()
        cached = self._names.get((which, norm))
        if cached is not None:
            return cached
        digest = hmac.digest(key, norm.encode("utf-8", "surrogatepass"), "sha256")
        name = dictionary_name(int.from_bytes(digest[:8], "big") % DICTIONARY_SIZE, endings)
        if len(self._names) >= _CACHE_LIMIT:
            self._names.clear()
        self._names[(which, norm)] = name
        return name

    # -- phones ---------------------------------------------------------------------
    def phone(self, value: str | None, country: str | None = None) -> str | None:
        """Valid for the country stays valid (same range and type), invalid stays invalid."""
        return self._phones.mask(value, country)

    # -- ids ------------------------------------------------------------------------
    def identifiers(self, values: Sequence[int | None]) -> list[int | None]:
        """The keyed permutation of 0 .. 2**52-1 for a whole column (nulls stay null).

        A balanced 4-round Feistel network on two 26-bit halves whose round function is
        AES-256 (the derived id key) of the round number and the right half: a bijection
        whatever the round function, so unique by construction. One AES call per round for
        the whole column.
        """
        n = len(values)
        if n == 0:
            return []
        nulls = np.fromiter((v is None for v in values), dtype=bool, count=n)
        ids = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=n)
        if ((ids < 0) | (ids >= (1 << ID_BITS))).any():
            raise SandboxError(
                f"an id is outside 0 .. 2**{ID_BITS}-1, which the id permutation covers: "
                "the sandbox supports non-negative ids below 4.5e15")
        left = (ids >> _HALF).astype(np.uint32)
        right = (ids & _HALF_MASK).astype(np.uint32)
        encryptor = Cipher(algorithms.AES(self._id_key), modes.ECB()).encryptor()
        block = np.zeros((n, 16), dtype=np.uint8)
        for r in range(_ROUNDS):
            block[:, 0] = r
            block[:, 12:16] = right.astype(">u4").view(np.uint8).reshape(n, 4)
            out = np.frombuffer(encryptor.update(block.tobytes()), dtype=">u4").reshape(n, 4)[:, 0]
            left, right = right, left ^ (out.astype(np.uint32) & np.uint32(_HALF_MASK))
        mapped = (left.astype(np.int64) << _HALF) | right.astype(np.int64)
        result: list[int | None] = mapped.tolist()
        for i in np.flatnonzero(nulls).tolist():
            result[i] = None
        return result

    def identifier(self, value: int | None) -> int | None:
        """One id through the permutation (see identifiers)."""
        return self.identifiers([value])[0]
