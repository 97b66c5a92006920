"""The intake boundary's limits: files, sizes, depth, counts, and messages safe to print."""

from __future__ import annotations

import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from campaignops import intake_limits as lim
from campaignops.brief import load_brief, parse_brief, validate_brief
from campaignops.errors import BriefError
from tests.factories import brief_dict

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
WINBACK = ROOT / "examples" / "briefs" / "winback.yaml"
W = WINBACK.read_text()
COUNTRIES = "value: [US, CA, GB]"
MAX_MESSAGE = 200 + (lim.MAX_PROBLEMS_SHOWN + 1) * (lim.MAX_LINE + 5)


def problems_of(call: Any, *args: Any) -> list[str]:
    """The problems a BriefError lists (the test fails if anything else is raised)."""
    with pytest.raises(BriefError) as info:
        call(*args)
    assert len(str(info.value)) <= MAX_MESSAGE
    return info.value.problems


# --- files ----------------------------------------------------------------------

def test_a_file_that_is_not_a_brief_is_not_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$abc$hashhashhash:19000:0:99999:7:::\ndaemon: x\nbin: secret-value\n")
    problems = problems_of(load_brief, secret)
    assert problems == ["brief: this is not a brief (expected a mapping of fields such as campaign_id, "
                        "name, owner, objective at the top level); check the file"]


@pytest.mark.parametrize("data, problem", [
    (b"password: secr\xe9t\n", "brief: byte 0xe9 at line 1, column 15 is not UTF-8 (Latin-1 or another "
                                "encoding?); save the file as UTF-8"),
    (b"secret_key: 1\nsecret_key: 2\nbroken: [\n", "brief: not valid YAML at line 4, column 1: did not find "
                                                   "expected node content; fix the syntax"),
    (b"token: !vault abc123\n", "brief: this is not a brief (expected a mapping of fields such as "
                                "campaign_id, name, owner, objective at the top level); check the file"),
])
def test_problems_in_a_file_that_is_not_a_brief_quote_none_of_it(data: bytes, problem: str) -> None:
    assert problems_of(parse_brief, data, "x.yaml") == [problem]


def test_etc_shadow_is_refused_without_its_content() -> None:
    if not Path("/etc/shadow").exists():
        pytest.skip("no /etc/shadow here")
    [problem] = problems_of(load_brief, "/etc/shadow")
    assert problem in (
        "brief: this is not a brief (expected a mapping of fields such as campaign_id, name, owner, "
        "objective at the top level); check the file",
        "brief: cannot read '/etc/shadow' (Permission denied); check the path and its permissions",
    )


def test_proc_self_mem_is_an_unreadable_file() -> None:
    assert problems_of(load_brief, "/proc/self/mem") == [
        "brief: cannot read '/proc/self/mem' (Input/output error); check the path and its permissions"]


def test_a_300_character_file_name_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300 + ".yaml")
    with pytest.raises(BriefError) as info:
        load_brief(path)
    [problem] = info.value.problems
    assert problem.startswith("brief: cannot read '") and problem.endswith(
        ".yaml' (File name too long); check the path and its permissions")
    assert len(info.value.source) == lim.MAX_SOURCE and info.value.source.endswith("…")


def test_a_missing_file_a_folder_a_device_and_a_pipe(tmp_path: Path) -> None:
    assert problems_of(load_brief, tmp_path / "nope.yaml") == [
        f"brief: no file at '{tmp_path / 'nope.yaml'}'; check the path"]
    assert problems_of(load_brief, tmp_path) == [
        f"brief: '{tmp_path}' is a folder, not a brief file; give the path of a .yaml file"]
    assert problems_of(load_brief, "/dev/zero") == [
        "brief: '/dev/zero' is not a regular file (a device, pipe or socket); give the path of a brief file"]
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would block: intake must not open it
    assert problems_of(load_brief, fifo) == [
        f"brief: '{fifo}' is not a regular file (a device, pipe or socket); give the path of a brief file"]
    assert problems_of(load_brief, "bad\x00name.yaml") == [
        "brief: cannot read 'bad\\x00name.yaml' (invalid path); check the path and its permissions"]


def test_a_1_gb_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2**30)  # sparse: no disk used
    started = time.perf_counter()
    assert problems_of(load_brief, big) == [
        "brief: the file is 1,073,741,824 bytes; a brief is at most 262,144 bytes (256 KiB): "
        "is this the right file?"]
    assert time.perf_counter() - started < 1


def test_bytes_over_the_limit_are_refused_unread() -> None:
    assert problems_of(parse_brief, b"#" * (lim.MAX_BRIEF_BYTES + 1), "x.yaml") == [
        "brief: the file is 262,145 bytes; a brief is at most 262,144 bytes (256 KiB): is this the right file?"]


@pytest.mark.parametrize("data, problem", [
    (b"", "brief: the file is empty; write the brief's fields (see examples/briefs/)"),
    (b"# just a comment\n", "brief: the file is empty; write the brief's fields (see examples/briefs/)"),
    (b"\x00\x01binary", "brief: the file has a NUL byte at line 1: it is binary, or UTF-16 text; "
                        "save the brief as UTF-8 text"),
    (W.encode("utf-16-be"), "brief: the file has a NUL byte at line 1: it is binary, or UTF-16 text; "
                            "save the brief as UTF-8 text"),
    (W.encode("utf-32"), "brief: the file is UTF-32 text; save it as UTF-8"),
    (b"- a\n- b\n", "brief: this is not a brief (expected a mapping of fields such as campaign_id, name, "
                    "owner, objective at the top level); check the file"),
])
def test_unreadable_bytes(data: bytes, problem: str) -> None:
    assert problems_of(parse_brief, data, "x.yaml") == [problem]


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    assert parse_brief(b"\xef\xbb\xbf" + W.encode(), "bom.yaml").campaign_id == "winback-lapsed-customers"


# --- sizes ----------------------------------------------------------------------

def test_100000_bad_values_give_a_short_message_quickly() -> None:
    values = ",".join(["XX"] * 60_000)  # as many as fit in the size limit
    started = time.perf_counter()
    problems = problems_of(parse_brief, W.replace(COUNTRIES, f"value: [{values}]").encode(), "x.yaml")
    assert time.perf_counter() - started < 5
    assert problems == [
        "audience.include.all[2].value: more than 1,000 items (from line 21); a brief has at most 1,000 in one place",
        "brief: more than 20,000 values (at line 21); a brief is far smaller: is this the right file?",
    ]


def test_900_bad_values_list_the_first_50_then_how_many_more() -> None:
    values = ",".join(["XX"] * 900)
    with pytest.raises(BriefError) as info:
        parse_brief(W.replace(COUNTRIES, f"value: [{values}]").encode(), "x.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "brief x.yaml has 900 problems:"
    assert lines[1] == "  - audience.include.all[2].value[0]: 'XX' is not an ISO 3166-1 alpha-2 country code"
    assert lines[-1] == "  - and 850 more; fix these and check again"
    assert len(lines) == 1 + lim.MAX_PROBLEMS_SHOWN + 1 and info.value.count == 900


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias() -> None:
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        bomb.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    text = W + "\n".join(bomb) + "\n"
    assert len(text) - len(W) < 2100
    started = time.perf_counter()
    problems = problems_of(parse_brief, text.encode(), "bomb.yaml")
    assert time.perf_counter() - started < 2
    assert problems[:2] == ["a: unknown field; remove it or fix the spelling",
                            "b: unknown field; remove it or fix the spelling"]
    assert problems[2] == "b[0]: YAML alias *a at line 36 is not allowed in a brief; write the value out in full"
    assert all("YAML alias" in p or "unknown field" in p for p in problems) and len(problems) == 9 + 8 * 9


def test_an_alias_tree_of_rules_is_refused() -> None:
    tree = ("x-rules:\n  r0: &r0 {field: lead_score, op: gt, value: 1}\n"
            + "".join(f"  r{i}: &r{i} {{any: [{', '.join(['*r' + str(i - 1)] * 9)}]}}\n" for i in range(1, 8)))
    text = W.replace("  include:\n    all:\n", "  include:\n    any: [*r7]\n    all:\n") + tree
    problems = problems_of(parse_brief, text.encode(), "tree.yaml")
    assert "audience.include.any[0]: YAML alias *r7 at line 18 is not allowed in a brief; write the value out in full" in problems


def test_a_100000_item_list_is_cut_off_early() -> None:
    items = "\n".join(["  - 1"] * 100_000)
    started = time.perf_counter()
    problems = problems_of(parse_brief, f"campaign_id: x\nlist:\n{items}\n".encode()[:lim.MAX_BRIEF_BYTES],
                           "x.yaml")
    assert time.perf_counter() - started < 2
    assert problems[0] == "list: more than 1,000 items (from line 1003); a brief has at most 1,000 in one place"


def test_nesting_text_and_key_lengths() -> None:
    deep = "campaign_id: x\nname: " + "[" * 41 + "]" * 41 + "\n"
    assert "name[0][0][0]: nested deeper than 40 levels at line 2; a brief is never this deep" in (
        problems_of(parse_brief, deep.encode(), "x.yaml"))
    long_key = f"campaign_id: x\n? {'k' * 4001}\n: 1\n"
    assert "brief: a key of 4,001 characters at line 2; keys are short" in (
        problems_of(parse_brief, long_key.encode(), "x.yaml"))
    long_text = f"campaign_id: x\nname: {'k' * 4001}\n"
    assert "name: text of 4,001 characters at line 2; at most 4,000" in (
        problems_of(parse_brief, long_text.encode(), "x.yaml"))


# --- already-parsed values (deployment parameters) --------------------------------

@pytest.mark.parametrize("override, problem", [
    ({"name": "\ud800"}, "name: text has a lone surrogate \\ud800, which cannot be stored; remove it"),
    ({"name": "x\x1b[2J"}, "name: text has the control character \\x1b; remove it"),
    ({"kpi": {"metric": "opens", "target": math.nan}}, "kpi.target: .nan is not a number; write a finite number"),
    ({"expected_audience": {"min": 0, "max": 2**64}},
     "expected_audience.max: 18446744073709551616 is beyond the 64-bit integer range; use a smaller number"),
    ({"expected_audience": {"min": 0, "max": 2**100_000}},
     "expected_audience.max: a number of about 30,103 digits is beyond the 64-bit integer range; use a smaller number"),
    ({"cells": {("a",)}}, "cells: a value of type set cannot stand in a brief; use text, numbers, "
                          "true/false, dates, lists and mappings"),
    ({5: "x"}, "brief: key 5 is not text; keys are text"),
    ({"send_at": "9999-12-31T23:59:59-01:00"},
     "send_at: 9999-12-31T23:59:59-01:00 is outside the years 1900-2199; use a real date"),
])
def test_parsed_values_meet_the_same_checks(override: dict[Any, Any], problem: str) -> None:
    assert problems_of(validate_brief, brief_dict(**{str(k): v for k, v in override.items()})
                       if 5 not in override else {**brief_dict(), **override}) == [problem]


def test_deep_and_recursive_parsed_values_are_bounded() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    expected = ["name: expected text, not [[[...]]]",
                "name[0][0][0]: nested deeper than 40 levels; a brief is never this deep"]
    assert problems_of(validate_brief, brief_dict(name=deep)) == expected
    loop: list[Any] = []
    loop.append(loop)
    assert problems_of(validate_brief, brief_dict(name=loop)) == expected
    assert problems_of(validate_brief, ["a list"]) == ["brief: expected a mapping of fields at the top level"]


def test_a_tuple_is_a_list_and_the_input_is_not_changed() -> None:
    data = brief_dict(cells=({"name": "all", "percent": 100},))
    assert validate_brief(data).cells[0].name == "all"
    assert isinstance(data["cells"], tuple)


# --- messages -------------------------------------------------------------------

def test_every_line_is_escaped_and_bounded() -> None:
    err = BriefError("a\x1b]0;evil\x07.yaml", ["x" * 1000, "key\nwith\rbreaks: \u202eevil", "\ud800"])
    lines = str(err).splitlines()
    assert lines == [
        "brief a\\x1b]0;evil\\x07.yaml has 3 problems:",
        "  - " + "x" * (lim.MAX_LINE - 1) + "…",
        "  - key\\nwith\\rbreaks: \\u202eevil",
        "  - \\ud800",
    ]
    str(err).encode("utf-8")  # printable anywhere


def test_a_brief_error_survives_pickling() -> None:
    err = BriefError("b.yaml", ["one", "two"])
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, BriefError) and str(back) == str(err) and back.problems == ["one", "two"]
