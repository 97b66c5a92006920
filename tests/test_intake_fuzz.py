"""Fuzz: thousands of mutated briefs through the intake boundary, within a time budget.

Each mutated brief must end as a valid Brief or a BriefError, never another
exception; the message is bounded and safe to print; each brief is checked in
bounded time and memory. A brief that passes must also be storable and reload
as it was (what the run reads back from co_runs), and its rules must compile.
The corpus is generated from the example briefs with a fixed seed, so a
failure reproduces: the assertion names the case.
"""

from __future__ import annotations

import functools
import json
import random
import time
import tracemalloc
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from campaignops import intake_limits as lim
from campaignops.brief import Brief, parse_brief, validate_brief
from campaignops.errors import BriefError
from campaignops.rules import compile_rule
from tests.factories import AS_OF, brief_dict

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [p.read_text() for p in sorted((ROOT / "examples" / "briefs").glob("*.yaml"))]
CASES = 3000
# A hang guard for one brief, not a speed target (a loaded CI core is 5-10x slower than a
# quiet one): a brief that makes the intake loop or blow up is caught, a slow machine is not.
CASE_S = 10.0
PEAK_MB = 64.0  # traced memory for one brief
MAX_MESSAGE = 200 + (lim.MAX_PROBLEMS_SHOWN + 1) * (lim.MAX_LINE + 5)

NASTY_VALUES = [
    ".nan", ".inf", "-.inf", "1e999", "-0", "0x7fffffffffffffffffff", "9223372036854775808",
    "-9223372036854775809", "99999999999999999999999999999999", "2027-02-30", "2027-03-01T25:00:00Z",
    "2027-03-01T10:00:00+25:00", "9999-12-31T23:59:59-01:00", "0001-01-01", "1899-12-31",
    "!!float abc", "!!int abc", "!!timestamp x", "!!binary aGVsbG8=", "!!python/object:os.system x",
    "!custom 3", "!!set {a}", "!!omap [a: 1]", "*undefined", "&anchor x", '"\\ud800"', '"\\e[2J\\e[H"',
    '"\\x00"', '"a\\nb"', '"\\u202e"', "<<", "=", "[", "{", "]", "}", "''", "'   '", "yes", "no", "NO",
    "on", "~", "null", "[]", "{}", "[1, 2]", "{a: 1}", "[[[[[[[[]]]]]]]]", "12:30:00", "'\\t'", "|",
    ">", "- x", "? x", "%TAG", "@x", "`x", "'", '"', "#", ": x", "x: y: z", "A" * 5000,
    "customer", "custmer", "Germany", "UK", "English", "lead", "America", "America/Nowhere",
    "a b c d e", "99 99 99 99 99", "0 25 * * *", "0 0 30 2 *", "@daily", "* * * * * *",
    "0", "-1", "101", "50.5", "true", "false", "email", "sms",
]
NASTY_KEYS = ["5", "yes", "null", "~", "1.5", "2027-01-01", '"a\\nb"', '"\\e[31mred"', "<<",
              "? [a]", "k" * 300, "campaign_id", "approvals", "value", "field", "op", "all", "any", "not"]
SNIPPETS = [
    "x: " + "[" * 300 + "\n",
    "x: " + "- " * 60 + "x\n",
    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
    "big: [" + ",".join(["1"] * 30000) + "]\n",
    "---\ncampaign_id: other\n",
    "approvals:\n  - {stage: business, approvers: [someone@example.com]}\n",
    "m: {<<: {a: 1}, b: 2}\n",
    "x: !!python/object/apply:os.system [echo hi]\n",
    "wide: {" + ", ".join(f"k{i}: {i}" for i in range(3000)) + "}\n",
    "\t\x01\x1b[2J\n",
]


def _mutate_text(text: str, rng: random.Random) -> str:
    """One text-level mutation of a brief."""
    if not text:  # an earlier mutation left nothing: start again from a snippet
        return rng.choice(SNIPPETS)
    lines = text.splitlines(keepends=True)
    if not lines:  # an earlier cut left nothing: start again from a snippet
        return rng.choice(SNIPPETS)
    i = rng.randrange(len(lines))
    kind = rng.randrange(9)
    if kind == 0:  # a value replaced
        head, sep, _ = lines[i].partition(": ")
        lines[i] = f"{head}{sep or ': '}{rng.choice(NASTY_VALUES)}\n"
    elif kind == 1:  # a value inside a flow mapping or list replaced
        parts = lines[i].split(", ")
        j = rng.randrange(len(parts))
        head, sep, _ = parts[j].partition(": ")
        parts[j] = f"{head}{sep}{rng.choice(NASTY_VALUES)}" + ("}\n" if j == len(parts) - 1 else "")
        lines[i] = ", ".join(parts)
    elif kind == 2:  # a key replaced
        _, sep, rest = lines[i].partition(":")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = f"{indent}{rng.choice(NASTY_KEYS)}:{rest if sep else ' x' + chr(10)}"
    elif kind == 3:
        lines.insert(i, lines[rng.randrange(len(lines))])  # a line repeated
    elif kind == 4:
        del lines[i]
    elif kind == 5:
        lines[i] = rng.choice(["  ", "", "    "]) + lines[i].lstrip(" ")
    elif kind == 6:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 7:
        lines.insert(i if rng.random() < 0.3 else len(lines), rng.choice(SNIPPETS))
    else:
        cut = rng.randrange(len(text) or 1)
        return text[:cut]
    return "".join(lines)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level mutation (encodings, stray bytes)."""
    kind = rng.randrange(4)
    if kind == 0:
        i = rng.randrange(len(data) or 1)
        return data[:i] + bytes([rng.choice([0x00, 0x07, 0x1B, 0x7F, 0x85, 0xC3, 0xE9, 0xFE, 0xFF])]) + data[i:]
    if kind == 1:
        i = rng.randrange(len(data) or 1)
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if kind == 2:
        return data.decode("utf-8", "replace").encode(rng.choice(["utf-16", "utf-32", "latin-1", "cp1252"]),
                                                       "replace")
    return data * rng.randint(2, 200)


def corpus(seed: int = 12) -> list[tuple[str, bytes]]:
    """The mutated briefs, named by their index and example."""
    rng = random.Random(seed)
    out = []
    for n in range(CASES):
        base = rng.randrange(len(EXAMPLES))
        text = EXAMPLES[base]
        for _ in range(rng.choice([1, 1, 2, 3])):
            text = _mutate_text(text, rng)
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.08:
            data = _mutate_bytes(data, rng)
        out.append((f"case-{n}-example-{base}.yaml", data))
    return out


def assert_safe(err: BriefError, case: str) -> None:
    """A rejection a terminal can print: bounded, one problem a line, no control characters."""
    text = str(err)
    assert len(text) <= MAX_MESSAGE, case
    assert err.problems, case
    for line in text.splitlines():
        assert len(line) <= lim.MAX_LINE + 10, case
        # Printable, or a plain space of another width (no-break space...): nothing a terminal acts on.
        assert all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in line), (case, line)
    assert "campaignops bug" not in text, (case, text)  # the boundary's last resort never fires
    text.encode("utf-8")


def assert_storable(brief: Brief, case: str) -> None:
    """An accepted brief stores and reloads as it was, and its rules compile to SQL."""
    stored = json.dumps(brief.model_dump(mode="json"), sort_keys=True, allow_nan=False)
    stored.encode("utf-8")
    again = Brief.model_validate(json.loads(stored))
    assert again.digest() == brief.digest(), case
    for rule in (again.include_rule, again.exclude_rule):
        if rule is not None:
            for dialect in (sqlite.dialect(), postgresql.dialect()):  # type: ignore[no-untyped-call]
                str(compile_rule(rule, AS_OF).compile(dialect=dialect))


def run_case(check: Callable[[], Brief], case: str, trace: bool) -> tuple[str, float, float]:
    """Run one brief through the boundary: (outcome, seconds, peak MB when traced)."""
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        brief = check()
        outcome = "accepted"
    except BriefError as err:
        outcome = "rejected"
        assert_safe(err, case)
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 1e6 if trace else 0.0
        if trace:
            tracemalloc.stop()
    if outcome == "accepted":
        assert_storable(brief, case)
    return outcome, seconds, peak


def test_thousands_of_mutated_briefs_end_in_a_brief_or_one_clean_brief_error() -> None:
    parse_brief(EXAMPLES[0].encode(), "warm-up.yaml")  # imports (Prefect's schedules) out of the timing
    outcomes: dict[str, int] = {"accepted": 0, "rejected": 0}
    for n, (case, data) in enumerate(corpus()):
        # Trace memory for one big input in three and one brief in ten (tracing slows each call 2-3x).
        trace = (len(data) > 20_000 and n % 3 == 0) or n % 10 == 0
        outcome, seconds, peak = run_case(functools.partial(parse_brief, data, case), case, trace)
        outcomes[outcome] += 1
        assert seconds < CASE_S, (case, seconds)
        assert peak < PEAK_MB, (case, peak)
    assert outcomes["rejected"] > CASES // 2 and outcomes["accepted"] > 10, outcomes  # the corpus bites


# --- parsed values, as deployment parameters arrive -------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["customer", "custmer", "US", "Germany", "en", "eq", "gt", "in", "lead_score",
                     "2027-03-01T10:00:00Z", "9999-12-31T23:59:59-01:00", "\ud800", "\x1b[2J", "0 9 * * MON"]),
    st.datetimes(), st.dates(),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner,
                                                 max_size=4)), max_leaves=12)


def _replace_somewhere(data: Any, path: list[int], new: Any) -> Any:
    """A copy of `data` with the node that `path` picks (index by index) replaced by `new`."""
    if not path or not isinstance(data, (dict, list)) or not data:
        return new
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = keys[path[0] % len(keys)]
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[key] = _replace_somewhere(data[key], path[1:], new)
    return copy


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(path=st.lists(st.integers(min_value=0, max_value=50), max_size=6), new=values)
def test_parsed_values_end_in_a_brief_or_one_clean_brief_error(path: list[int], new: Any) -> None:
    data = _replace_somewhere(brief_dict(audience={"include": {"all": [
        {"field": "lifecycle_stage", "op": "in", "value": ["customer", "lead"]},
        {"field": "lead_score", "op": "between", "value": [10, 90]},
        {"not": {"field": "last_open_at", "op": "within_days", "value": 30}}]}}), path, new)
    case = f"path {path} -> {new!r:.200}"
    _, seconds, _ = run_case(lambda: validate_brief(data, "params"), case, trace=False)
    assert seconds < CASE_S, case


def test_the_corpus_is_the_same_every_run() -> None:
    assert corpus()[:50] == corpus()[:50]
