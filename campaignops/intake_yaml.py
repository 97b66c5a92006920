"""A strict YAML reader for briefs: plain data only, bounded work, a line for every problem.

It builds the document from the parser's event stream (libyaml's C parser when
present), so nothing recurses and nothing is expanded: it refuses duplicate
keys, keys that are not text, tags, aliases, merge keys, several documents and
impossible dates, and stops building past the limits in intake_limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import ScalarNode

from campaignops.intake_limits import MAX_ITEMS, MAX_NESTING, MAX_TEXT, MAX_VALUES
from campaignops.textsafe import clip

Path = tuple[str | int, ...]
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BUILD = yaml.constructor.SafeConstructor()
_RESOLVER = yaml.resolver.Resolver()
_STD = "tag:yaml.org,2002:"
_KINDS = {"bool": "true or false", "int": "a number", "float": "a number", "null": "null",
          "timestamp": "a date"}


class Invalid:
    """Stands where a value was refused, so later checks do not report it again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<refused value>"


INVALID = Invalid()


def render_path(path: Path) -> str:
    """A field path as messages write it: audience.include.all[0].value ('brief' for the top)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = clip(str(part), 40)
            out += f".{name}" if out else name
    return out or "brief"


@dataclass
class Problems:
    """Problems found so far, and the paths they condemn (later checks stay quiet there)."""

    items: list[str] = field(default_factory=list)
    flagged: set[str] = field(default_factory=set)
    # path -> (first, last) position of its value and everything inside it, in document order
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, path: Path, text: str, *, condemns: bool = True) -> None:
        """Record `text` as a problem at `path`; if it `condemns` the value there, later
        checks do not report that value again (a refused key condemns nothing)."""
        where = render_path(path)
        self.items.append(f"{where}: {text}")
        if condemns:
            self.flagged.add(where)

    def covers(self, problem: str) -> bool:
        """Whether a later problem is about a value already reported (or inside one)."""
        return any(where in self.flagged for where in _ancestors(problem))

    def in_document_order(self) -> list[str]:
        """The problems sorted by where their field is in the document (stable otherwise).

        A problem about a missing field comes after everything its parent holds.
        """
        def position(problem: str) -> tuple[int, int]:
            for i, where in enumerate([*_ancestors(problem), "brief"]):
                if where in self.positions:
                    first, last = self.positions[where]
                    return (first, 0) if i == 0 else (last, 1)
            return (0, 0)
        return sorted(self.items, key=position)

    def place(self, preorder: list[tuple[str, int]]) -> None:
        """Record each path's span from the paths (with depths) in document order."""
        open_: list[tuple[str, int, int]] = []  # path, depth, first position
        for pos, (where, depth) in enumerate(preorder):
            while open_ and open_[-1][1] >= depth:
                done, _, first = open_.pop()
                self.positions.setdefault(done, (first, pos - 1))
            open_.append((where, depth, pos))
        for done, _, first in open_:
            self.positions.setdefault(done, (first, len(preorder) - 1))


def _ancestors(problem: str) -> list[str]:
    """The path a problem is about, then each path above it: a.b[0], a.b, a."""
    where = problem.partition(": ")[0]
    out = []
    while where:
        out.append(where)
        cut = max(where.rfind("."), where.rfind("["))
        where = where[:cut] if cut > 0 else ""
    return out


@dataclass
class _Frame:
    """A mapping or list being built."""

    value: dict[str, Any] | list[Any]
    path: Path
    key: str | None = None  # a mapping's key waiting for its value
    lines: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> where first seen
    skip_value: bool = False  # the key was refused: drop its value
    full: bool = False  # past MAX_ITEMS: drop the rest


def _tag(tag: str) -> str:
    return "!!" + tag[len(_STD):] if tag.startswith(_STD) else tag


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 0


def _column(event: yaml.Event) -> int:
    return event.start_mark.column + 1 if event.start_mark is not None else 0


class _Builder:
    """Turns parser events into plain data, recording problems instead of raising."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.stack: list[_Frame] = []
        self.skipping = 0  # depth inside a subtree being dropped
        self.values = 0
        self.root: Any = None
        self.documents = 0

    def partial(self) -> Any:
        """The top level as far as it was built."""
        return self.stack[0].value if self.stack else self.root

    def feed(self, event: yaml.Event) -> bool:
        """Take one event; False when the document is too large to go on."""
        if self.skipping:
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self.skipping += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                self.skipping -= 1
                if not self.skipping:
                    self._close_drop()
            return True
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                self.problems.add((), f"a second YAML document starts at line {_line(event)}; "
                                      "a brief is one document (remove the ---)")
                return False
            return True
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._finish(self.stack.pop().value)
            return True
        if not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent,
                                  yaml.SequenceStartEvent)):
            return True
        self.values += 1
        if self.values > MAX_VALUES:
            self.problems.add((), f"more than {MAX_VALUES:,} values (at line {_line(event)}); "
                                  "a brief is far smaller: is this the right file?")
            return False
        frame = self.stack[-1] if self.stack else None
        if frame is not None and isinstance(frame.value, dict) and frame.key is None \
                and not frame.skip_value:
            self._key(frame, event)
        else:
            self._node(frame, event)
        return True

    def _here(self, frame: _Frame | None) -> Path:
        if frame is None:
            return ()
        if isinstance(frame.value, dict):
            return (*frame.path, frame.key or "")
        return (*frame.path, len(frame.value))

    def _drop(self, event: yaml.Event) -> None:
        """Drop the node that starts with `event` (its whole subtree for a collection)."""
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self.skipping = 1
        else:
            self._close_drop()

    def _close_drop(self) -> None:
        frame = self.stack[-1] if self.stack else None
        if frame is None:
            self.root = INVALID
        elif isinstance(frame.value, dict):
            if frame.skip_value:
                frame.skip_value = False  # the refused key's value is gone too
            elif frame.key is None:
                frame.skip_value = True  # a refused key: its value follows
            else:
                if not frame.full:
                    frame.value[frame.key] = INVALID
                frame.key = None
        elif not frame.full:
            frame.value.append(INVALID)

    def _finish(self, value: Any) -> None:
        """Store a finished value in the frame waiting for it."""
        frame = self.stack[-1] if self.stack else None
        if frame is None:
            self.root = value
        elif isinstance(frame.value, dict):
            if frame.key is not None:
                frame.value[frame.key] = value
            frame.key = None
        else:
            frame.value.append(value)

    def _room(self, frame: _Frame | None, event: yaml.Event) -> bool:
        """Whether the frame takes another item (one problem when it is full)."""
        if frame is None or frame.full:
            return frame is None
        if len(frame.value) < MAX_ITEMS:
            return True
        frame.full = True
        kind = "keys" if isinstance(frame.value, dict) else "items"
        self.problems.add(frame.path, f"more than {MAX_ITEMS:,} {kind} (from line {_line(event)}); "
                                      f"a brief has at most {MAX_ITEMS:,} in one place")
        return False

    def _refuse(self, path: Path, event: yaml.Event) -> str | None:
        """Why this node may not stand in a brief at all, or None."""
        line = _line(event)
        if isinstance(event, yaml.AliasEvent):
            return (f"YAML alias *{clip(str(event.anchor), 40)} at line {line} is not allowed in a "
                    "brief; write the value out in full")
        tag = getattr(event, "tag", None)
        if tag is not None:
            return (f"YAML tag {clip(_tag(tag), 40)} at line {line} is not allowed in a brief; "
                    "write the value plainly (quote it to make it text)")
        return None

    def _too_deep(self, path: Path, event: yaml.Event) -> bool:
        """Whether a collection at `path` would nest past MAX_NESTING (one problem if so)."""
        if len(path) < MAX_NESTING:
            return False
        self.problems.add(path[:4], f"nested deeper than {MAX_NESTING} levels at line "
                                    f"{_line(event)}; a brief is never this deep")
        return True

    def _key(self, frame: _Frame, event: yaml.Event) -> None:
        line = _line(event)
        full = not self._room(frame, event)
        problem = None if full else self._refuse(frame.path, event)
        if problem is None and not full:
            if not isinstance(event, yaml.ScalarEvent):
                problem = f"a key at line {line} is a list or mapping; keys are plain text"
            else:
                tag = _RESOLVER.resolve(ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
                kind = tag[len(_STD):]
                if tag != _STD + "str":
                    what = _KINDS.get(kind, "not text")
                    problem = (f"key {clip(event.value, 40)} at line {line} is read as {what}, "
                               "not text; quote it or fix the spelling")
                    if kind == "merge":  # its fields are lost: what seems missing is not news
                        self.problems.add(frame.path, f"merge key << at line {line} is not allowed "
                                                      "in a brief; write the fields out")
                        self._drop(event)
                        return
                elif len(event.value) > MAX_TEXT:
                    problem = f"a key of {len(event.value):,} characters at line {line}; keys are short"
                elif event.value in frame.lines:
                    first = frame.lines[event.value]
                    at = (f"line {line}, column {_column(event)} (first at column "
                          f"{first[1]})" if first[0] == line else f"line {line} (first at line {first[0]})")
                    self.problems.add((*frame.path, event.value),
                                      f"duplicate key at {at}; keep one of them", condemns=False)
                    self._drop(event)
                    return
                else:
                    frame.lines[event.value] = (line, _column(event))
                    frame.key = event.value
                    return
        if problem is not None:
            self.problems.add(frame.path, problem, condemns=False)
        self._drop(event)

    def _node(self, frame: _Frame | None, event: yaml.Event) -> None:
        path = self._here(frame)
        dropping = frame is not None and isinstance(frame.value, dict) and frame.skip_value
        if dropping or not self._room(frame, event):
            self._drop(event)
            return
        problem = self._refuse(path, event)
        if problem is not None:
            self.problems.add(path, problem)
            self._drop(event)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)) \
                and self._too_deep(path, event):
            self._drop(event)
        elif isinstance(event, yaml.MappingStartEvent):
            self.stack.append(_Frame({}, path))
        elif isinstance(event, yaml.SequenceStartEvent):
            self.stack.append(_Frame([], path))
        elif isinstance(event, yaml.ScalarEvent):
            self._finish(self._scalar(path, event))

    def _scalar(self, path: Path, event: yaml.ScalarEvent) -> Any:
        line = _line(event)
        if len(event.value) > MAX_TEXT:
            self.problems.add(path, f"text of {len(event.value):,} characters at line {line}; "
                                    f"at most {MAX_TEXT:,}")
            return INVALID
        tag = _RESOLVER.resolve(ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        node = ScalarNode(tag, event.value, style=event.style)
        kind = tag[len(_STD):]
        build = {"str": _BUILD.construct_yaml_str, "null": _BUILD.construct_yaml_null,
                 "bool": _BUILD.construct_yaml_bool, "int": _BUILD.construct_yaml_int,
                 "float": _BUILD.construct_yaml_float,
                 "timestamp": _BUILD.construct_yaml_timestamp}.get(kind)
        if build is None:
            self.problems.add(path, f"{clip(event.value, 40)} at line {line} has a special meaning "
                                    "in YAML; quote it to make it text")
            return INVALID
        try:
            return build(node)
        except (ValueError, OverflowError) as exc:
            what = "date or time" if kind == "timestamp" else "number"
            reason = str(exc) if len(str(exc)) <= 40 else "out of range"
            self.problems.add(path, f"{clip(event.value, 40)} at line {line} is not a real {what} "
                                    f"({reason}); fix it")
            return INVALID


def _syntax_problem(exc: yaml.YAMLError, text: str) -> str:
    """The parser's complaint with its line and column, never the document's content."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    else:
        position = getattr(exc, "position", 0)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
    reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "unreadable"
    return f"not valid YAML at line {line}, column {column}: {clip(str(reason), 80)}; fix the syntax"


def load_yaml(text: str, problems: Problems) -> tuple[Any, bool]:
    """The document as plain data, and whether it was read to the end.

    Refused values stand as INVALID with their problem in `problems`; a value
    dropped whole (past a limit) is missing. When reading stops early, the data
    is the top level as far as it was read, and the last problem says why.
    """
    builder = _Builder(problems)
    loader = _Loader(text)
    try:
        while loader.check_event():
            if not builder.feed(loader.get_event()):
                return builder.partial(), False
    except yaml.YAMLError as exc:
        problems.add((), _syntax_problem(exc, text))
        return builder.partial(), False
    finally:
        loader.dispose()
    if builder.documents == 0:
        problems.add((), "the file is empty; write the brief's fields (see examples/briefs/)")
        return None, False
    return builder.root, True
