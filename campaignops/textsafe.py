"""Text that is safe to print on a terminal: escaped, on one line, bounded."""

from __future__ import annotations

import datetime as dt
import math
import reprlib
import unicodedata
from typing import Any

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Not printable as they are: controls (ANSI escapes), format characters (bidi
# overrides), surrogates, private use, unassigned, line and paragraph separators.
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlong = 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


def escape(text: str) -> str:
    """Every character a terminal would act on written as a visible escape."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch != " " and unicodedata.category(ch) in _UNSAFE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def clip(text: str, limit: int) -> str:
    """Text escaped and cut to at most `limit` characters (an ellipsis marks a cut)."""
    safe = escape(text[: limit * 2])
    if len(safe) <= limit and len(text) <= limit * 2:
        return safe
    return safe[: limit - 1] + "…"


def clip_middle(text: str, limit: int) -> str:
    """Like clip, but keeping both ends (a path's folder and its file name)."""
    if len(text) <= limit:
        return clip(text, limit)
    half = limit // 2
    return clip(text[:half], half) + "…" + clip(text[-(limit - half - 1):], limit - half - 1)


def show(value: Any) -> str:
    """A value as a message quotes it: short, escaped, YAML spelling for special numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"a number of about {int((value.bit_length() - 1) * math.log10(2)) + 1:,} digits"
    if isinstance(value, dt.date):
        return value.isoformat()
    return escape(_repr.repr(value))
