"""The handoff-file suite: a file drop's CSV and manifest checked before the file is released."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.brief import PERSONALISATION_FIELDS
from campaignops.qa.gx import Job, qa_result, remove_output, validate
from campaignops.qa.results import CheckResult, QAResult, at_tokens
from campaignops.qa.suites import SuiteError, Variant, expand, read_suite_json

_COLUMN_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


FIELD_COUNT_COLUMN = "co_qa_fields"  # how many fields the CSV row had (added while loading)


LOAD_CHUNK_ROWS = 50_000


def _manifest(manifest_path: Path) -> dict[str, Any]:
    """The drop's manifest (read as the handoff reads it), with the fields this suite needs."""
    from campaignops.errors import HandoffError
    from campaignops.handoff.file import read_manifest

    try:
        manifest = read_manifest(manifest_path)
    except HandoffError as exc:  # malformed: this suite's callers expect a ValueError
        raise ValueError(str(exc)) from None
    if manifest is None:
        raise ValueError(f"no manifest at {manifest_path}")
    rows, columns, sha = manifest.get("rows"), manifest.get("columns"), manifest.get("sha256")
    if (
        isinstance(rows, bool)
        or not isinstance(rows, int)
        or rows < 0
        or not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(sha, str)
    ):
        raise ValueError(f"manifest {manifest_path} needs rows (int), columns (list) and sha256")
    return manifest


def _load_csv(csv_path: Path, db_path: Path) -> tuple[list[str], str]:
    """Stream the CSV into table handoff_file of a new SQLite file; returns (header, sha256).

    One pass over the bytes: hashed as read, parsed with the csv module, inserted
    LOAD_CHUNK_ROWS rows at a time (all columns TEXT, empty fields as NULL, plus the row's
    field count). Memory stays at one chunk whatever the file's size.
    """
    import csv
    import hashlib
    import sqlite3

    digest = hashlib.sha256()

    def lines() -> Iterator[str]:
        with Path(csv_path).open("rb") as raw:
            for line in raw:
                digest.update(line)
                yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    header = next(reader, None) or []
    if (
        not header
        or len(set(header)) != len(header)
        or not all(_COLUMN_RE.fullmatch(c) and c != FIELD_COUNT_COLUMN for c in header)
    ):
        for _ in reader:  # hash the rest
            pass
        raise ValueError(
            f"{Path(csv_path).name}: the header must be distinct lower-case column names, "
            f"got {len(header)} column(s)"
        )
    columns = [*header, FIELD_COUNT_COLUMN]
    n = len(header)
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(
            "CREATE TABLE handoff_file ("  # noqa: S608 - names matched _COLUMN_RE
            + ", ".join(f'"{c}" TEXT' for c in header)
            + f', "{FIELD_COUNT_COLUMN}" INTEGER)'
        )
        insert = (
            f"INSERT INTO handoff_file VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608
        )
        chunk: list[list[Any]] = []
        for record in reader:
            fields = len(record)
            row: list[Any] = [v if v != "" else None for v in record[:n]]
            row += [None] * (n - len(row))
            row.append(fields)
            chunk.append(row)
            if len(chunk) >= LOAD_CHUNK_ROWS:
                conn.executemany(insert, chunk)
                chunk = []
        if chunk:
            conn.executemany(insert, chunk)
        conn.commit()
    finally:
        conn.close()
    return header, digest.hexdigest()


def _csv_addresses_in(csv_path: Path, tokens: set[str]) -> int:
    """How many CSV rows carry an address among tokens (streamed)."""
    import csv

    if not tokens:
        return 0
    found = 0
    with Path(csv_path).open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        index = header.index("address") if "address" in header else None
        for record in reader:
            values = [record[index]] if index is not None and index < len(record) else record
            found += any(v.strip().lower() in tokens for v in values)
    return found


def run_handoff_file_qa(
    csv_path: Path,
    manifest_path: Path,
    *,
    home: Path,
    required_fields: list[str] | tuple[str, ...] = (),
    build_docs: bool = True,
    suite_name: str = "handoff_file",
) -> QAResult:
    """Validate a file-drop handoff (write_file_drop's CSV + manifest) before it is released.

    The CSV is streamed once into a private temporary SQLite file beside it (hashed while read,
    LOAD_CHUNK_ROWS rows per insert: no DataFrame of the file) and validated there with GX's
    SQL data source, so cross-row checks (unique customer, unique address) see the whole file.
    The temporary file is deleted before this returns. The manifest's sha256 is compared with
    the bytes read (a check computed here, declared in the suite's meta.computed_checks).
    """
    import tempfile

    started = time.perf_counter()
    data = read_suite_json(suite_name)
    manifest = _manifest(manifest_path)
    fields = list(dict.fromkeys(required_fields))
    for name in fields:
        if name not in PERSONALISATION_FIELDS:  # whitelisted identifiers reach the SQL
            raise ValueError(f"required field {name!r} is not a personalisation field")
    raw_label = str(manifest.get("run_id") or Path(csv_path).stem)
    label = f"{suite_name}-{re.sub(r'[^A-Za-z0-9._-]', '_', raw_label)[:100]}"

    folder = Path(csv_path).resolve().parent
    with tempfile.TemporaryDirectory(dir=folder, prefix=".qa-") as scratch:  # mode 0700
        db_path = Path(scratch) / "handoff.sqlite"
        header, sha = _load_csv(Path(csv_path), db_path)
        text = {
            "manifest_rows": manifest["rows"],
            "manifest_columns": ", ".join(manifest["columns"]),
            "header_fields": len(header),
        }
        ex = expand(data, text, {"header_fields": str(len(header))}, for_each={
            "required_field": [Variant(f, text={"field": f}, query={"field": f}) for f in fields],
        })
        parameters = {
            "manifest_rows": int(manifest["rows"]),
            "manifest_columns": [*manifest["columns"], FIELD_COUNT_COLUMN],
        }
        suite_json = {k: v for k, v in data.items() if k != "expectations"}
        suite_json["name"] = f"{data['name']}-file"
        suite_json["expectations"] = ex.groups.get("", [])
        output = validate(
            sa.engine.make_url(f"sqlite:///{db_path}"),
            [Job("handoff_file", suite_json, table="handoff_file")],
            parameters,
            label=label,
            home=home,
            build_docs=build_docs,
        )
    computed: list[CheckResult] = []
    for check in data.get("meta", {}).get("computed_checks", []):
        if check.get("name") != "sha256_matches_manifest":
            raise SuiteError(f"suite {suite_name}: unknown computed check {check.get('name')!r}")
        computed.append(CheckResult(
            name="sha256_matches_manifest", expectation="campaignops.sha256",
            critical=bool(check.get("critical", True)), passed=sha == manifest["sha256"],
            observed="matches" if sha == manifest["sha256"] else "differs",
            threshold=str(check.get("threshold", "")),
        ))
    leaked = _csv_addresses_in(Path(csv_path), at_tokens(output.written))
    if leaked:
        remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} handoff addresses; removed it (a bug in campaignops.qa)"
        )
    return qa_result(suite_name, output, ex.critical, ex.thresholds, started, ex.skipped, computed)
