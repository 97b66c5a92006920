"""The intake boundary's first steps: a brief file's bytes, its text, and plain values.

Each step records problems (never raises), so the brief's every problem can be
listed in one reply; brief.py turns them into a BriefError.
"""

from __future__ import annotations

import codecs
import datetime as dt
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from campaignops.intake_limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_BRIEF_BYTES,
    MAX_ITEMS,
    MAX_NESTING,
    MAX_TEXT,
    MAX_VALUES,
    MAX_YEAR,
    MIN_YEAR,
    within_years,
)
from campaignops.intake_yaml import INVALID, Invalid, Problems, render_path
from campaignops.intake_yaml import Path as FieldPath
from campaignops.textsafe import clip_middle, show

_LINE_KEY = re.compile(r"\s*(?:-\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*:")
_UTF16_32 = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",
             codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}


def read_brief_file(path: str | Path, problems: Problems) -> bytes | None:
    """The file's bytes, or None with the reason (missing, not a file, too large, unreadable)."""
    where = f"'{clip_middle(str(path), 160)}'"
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            problems.add((), f"{where} is a folder, not a brief file; give the path of a .yaml file")
            return None
        if not stat.S_ISREG(info.st_mode):
            problems.add((), f"{where} is not a regular file (a device, pipe or socket); "
                             "give the path of a brief file")
            return None
        if info.st_size > MAX_BRIEF_BYTES:
            problems.add((), _too_large(info.st_size))
            return None
        with open(path, "rb") as f:
            data = f.read(MAX_BRIEF_BYTES + 1)  # files under /proc claim to be empty
    except FileNotFoundError:
        problems.add((), f"no file at {where}; check the path")
        return None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        problems.add((), f"cannot read {where} ({reason}); check the path and its permissions")
        return None
    if len(data) > MAX_BRIEF_BYTES:
        problems.add((), _too_large(len(data), exact=False))
        return None
    return data


def _too_large(size: int, exact: bool = True) -> str:
    told = f"{size:,} bytes" if exact else f"over {MAX_BRIEF_BYTES:,} bytes"
    return (f"the file is {told}; a brief is at most {MAX_BRIEF_BYTES:,} bytes "
            f"({MAX_BRIEF_BYTES // 1024} KiB): is this the right file?")


def decode_brief(data: bytes, problems: Problems, known: frozenset[str] = frozenset()) -> str | None:
    """The brief's text (UTF-8, an optional byte order mark), or None with the reason.

    A bad byte is placed by line and column, and by the field its line sets when
    that is one of the `known` field names (nothing else of the file is quoted).
    """
    if len(data) > MAX_BRIEF_BYTES:
        problems.add((), _too_large(len(data)))
        return None
    for bom, name in _UTF16_32.items():
        if data.startswith(bom):
            problems.add((), f"the file is {name} text; save it as UTF-8")
            return None
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        problems.add((), f"the file has a NUL byte at line {line}: it is "
                         "binary, or UTF-16 text; save the brief as UTF-8 text")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        column = exc.start - start + 1
        key = _LINE_KEY.match(data[start:exc.start].decode("ascii", "replace"))
        field = f" (in {key.group(1)})" if key and key.group(1) in known else ""
        problems.add((), f"byte 0x{data[exc.start]:02x} at line {line}, column {column}{field} is not "
                         "UTF-8 (Latin-1 or another encoding?); save the file as UTF-8")
        return None


def _text_problem(text: str) -> str | None:
    """Why a text value cannot be stored or shown as it is, or None."""
    if len(text) > MAX_TEXT:
        return f"text of {len(text):,} characters; at most {MAX_TEXT:,}"
    if text.isprintable():
        return None
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"text has a lone surrogate \\u{code:04x}, which cannot be stored; remove it"
        if (code < 0x20 and ch not in "\n\t") or 0x7F <= code < 0xA0:
            return f"text has the control character \\x{code:02x}; remove it"
    return None


def _scalar_problem(value: Any) -> str | None:
    """Why a single value cannot stand in a brief, or None."""
    if value is None or isinstance(value, (bool, Invalid)):
        return None
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return f"{show(value)} is beyond the 64-bit integer range; use a smaller number"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{show(value)} is not a number; write a finite number"
    if isinstance(value, dt.date):
        if within_years(value):
            return None
        return f"{show(value)} is outside the years {MIN_YEAR}-{MAX_YEAR}; use a real date"
    return (f"a value of type {type(value).__name__} cannot stand in a brief; use text, numbers, "
            "true/false, dates, lists and mappings")


def clean_tree(data: Any, problems: Problems) -> tuple[Any, bool]:
    """A copy of parsed data where each value a brief cannot hold stands as INVALID.

    Walks without recursion; False when the data is too large to check at all.
    """
    holder: list[Any] = [None]
    todo: list[tuple[Any, FieldPath, Any, Any]] = [(data, (), holder, 0)]
    seen = 0
    preorder: list[tuple[str, int]] = []
    while todo:
        value, path, parent, slot = todo.pop()
        seen += 1
        preorder.append((render_path(path), len(path)))
        if seen > MAX_VALUES:
            problems.add((), f"more than {MAX_VALUES:,} values; a brief is far smaller")
            return None, False
        out: Any
        if isinstance(value, (dict, list, tuple)):
            if len(path) >= MAX_NESTING:
                problems.add(path[:4], f"nested deeper than {MAX_NESTING} levels; "
                                       "a brief is never this deep")
                out = INVALID
            elif len(value) > MAX_ITEMS:
                problems.add(path, f"more than {MAX_ITEMS:,} items; a brief has at most "
                                   f"{MAX_ITEMS:,} in one place")
                out = INVALID
            else:
                out = _children(value, path, problems, todo)
        else:
            problem = _scalar_problem(value)
            if problem is not None:
                problems.add(path, problem)
            out = INVALID if problem is not None else value
        parent[slot] = out
    problems.place(preorder)
    return holder[0], True


def _children(value: dict[Any, Any] | list[Any] | tuple[Any, ...], path: FieldPath,
              problems: Problems, todo: list[tuple[Any, FieldPath, Any, Any]]) -> Any:
    """An empty copy of a collection, its items queued in document order."""
    if isinstance(value, dict):
        copy: dict[str, Any] = {}
        pending = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(path, f"key {show(key)} is not text; keys are text",
                         condemns=False)
            elif len(key) > MAX_TEXT:
                problems.add(path, f"a key of {len(key):,} characters; keys are short",
                         condemns=False)
            else:
                copy[key] = None
                pending.append((item, (*path, key), copy, key))
        todo.extend(reversed(pending))
        return copy
    items: list[Any] = [None] * len(value)
    todo.extend(reversed([(item, (*path, i), items, i) for i, item in enumerate(value)]))
    return items
