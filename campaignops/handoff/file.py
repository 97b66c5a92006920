"""File-drop handoff: the approved audience as a CSV plus a manifest (rows, sha256), released once.

Both are written to a staging folder, checked by the handoff_file suite, and only then
moved into the drop folder, CSV before manifest, so a manifest always describes a
complete CSV. A released drop is never replaced (the ESP may have imported it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.brief import Brief
from campaignops.errors import HandoffError, HandoffMismatch, HandoffRefused
from campaignops.handoff.batches import (
    _check_fields,
    iter_batches,
    personalisation,
)
from campaignops.handoff.outbox import Outbox
from campaignops.handoff.outbox import batches as outbox_batches
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class FileDrop:
    """A CSV of the recipients and its manifest (row count and sha256)."""

    csv_path: Path
    manifest_path: Path
    rows: int
    sha256: str


# -- file drop ----------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file_drop(
    engine: Engine,
    run_id: str,
    folder: Path,
    fields: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
    batch_size: int = 5000,
    outbox: Outbox | None = None,
) -> FileDrop:
    """``{run_id}.csv`` plus ``{run_id}.manifest.json`` (rows, sha256, columns).

    Both are streamed to temporary files in ``folder`` and moved into place with
    ``os.replace``: the CSV first, then the manifest, so a manifest always
    describes a complete CSV. A failure midway removes the temporary files and
    leaves no partial CSV or manifest behind.
    """
    if not _SAFE_NAME.match(run_id):
        raise HandoffError(f"run id {run_id!r} is not usable as a file name")
    cols = _check_fields(fields)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{run_id}.csv"
    manifest_path = folder / f"{run_id}.manifest.json"
    columns = ["customer_id", "address", "cell", "offer_code", "seed", *cols]
    digest = hashlib.sha256()
    rows = 0
    temps: list[str] = []
    try:
        fd, tmp_csv = tempfile.mkstemp(dir=folder, prefix=f".{run_id}.", suffix=".csv.tmp")
        temps.append(tmp_csv)
        with os.fdopen(fd, "wb") as out:

            def emit(records: list[list[Any]]) -> None:
                buf = io.StringIO()
                csv.writer(buf).writerows(records)
                data = buf.getvalue().encode()
                digest.update(data)
                out.write(data)

            emit([columns])
            source = (outbox_batches(outbox, batch_size) if outbox is not None
                      else iter_batches(engine, run_id, batch_size, cols, fallbacks))
            for _, batch in source:
                emit(
                    [
                        [
                            "" if r["customer_id"] is None else r["customer_id"],
                            r["address"], r["cell"] or "", r["offer_code"] or "",
                            "true" if r["seed"] else "false",
                            *["" if r["fields"][f] is None else r["fields"][f] for f in cols],
                        ]
                        for r in batch
                    ]
                )
                rows += len(batch)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        manifest = {
            "run_id": run_id,
            "csv": csv_path.name,
            "rows": rows,
            "sha256": sha,
            "columns": columns,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        fd, tmp_manifest = tempfile.mkstemp(
            dir=folder, prefix=f".{run_id}.", suffix=".manifest.tmp"
        )
        temps.append(tmp_manifest)
        with os.fdopen(fd, "w", encoding="utf-8") as mf:
            json.dump(manifest, mf, indent=2, sort_keys=True)
            mf.write("\n")
            mf.flush()
            os.fsync(mf.fileno())
        manifest_path.unlink(missing_ok=True)  # an old manifest must not describe the new CSV
        os.replace(tmp_csv, csv_path)
        os.replace(tmp_manifest, manifest_path)
        temps.clear()
        _fsync_dir(folder)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return FileDrop(csv_path=csv_path, manifest_path=manifest_path, rows=rows, sha256=sha)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A drop's manifest as a dict, or None when there is no such file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise HandoffError(f"manifest {Path(path).name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise HandoffError(f"manifest {Path(path).name} is not a JSON object")
    return data


def discard_file_drop(drop: FileDrop) -> None:
    """Remove a drop's CSV and manifest (the manifest first); missing files are fine."""
    for path in (drop.manifest_path, drop.csv_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def release_file_drop(staged: FileDrop, folder: Path) -> tuple[FileDrop, bool]:
    """Move a checked drop from its staging folder into ``folder``: CSV first, manifest last.

    Returns the released drop and whether this call released it. A drop of the same run
    already in ``folder`` with the same sha256 and rows is left untouched (a rerun changes
    nothing); one with other content is refused, since the ESP may have imported it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    released = FileDrop(
        csv_path=folder / staged.csv_path.name, manifest_path=folder / staged.manifest_path.name,
        rows=staged.rows, sha256=staged.sha256,
    )
    existing = read_manifest(released.manifest_path)
    if existing is not None:
        if existing.get("sha256") == staged.sha256 and existing.get("rows") == staged.rows:
            discard_file_drop(staged)
            return released, False
        raise HandoffMismatch(
            f"file drop mismatch: {released.manifest_path.name} is already released with sha256 "
            f"{str(existing.get('sha256'))[:12]} but the run now makes {staged.sha256[:12]}: "
            "not replacing a file the ESP may have imported; move it away to release again"
        )
    os.replace(staged.csv_path, released.csv_path)
    os.replace(staged.manifest_path, released.manifest_path)
    _fsync_dir(folder)
    return released, True


STAGING_DIR = ".staging"  # drops are written and checked here, then released beside it


def released_file(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """The file a file-mode handoff of the run released (its audit details), if any."""
    for r in audit.trail(engine, run_id):
        if r.step == "handoff" and r.action == "file_written":
            return r.details
    return None


@dataclass(frozen=True)
class FileHandoff:
    """A file-drop handoff: the released (or already released) file, checked and reconciled."""

    run_id: str
    csv_path: Path
    manifest_path: Path
    rows: int
    sha256: str
    released: bool  # False: an earlier attempt released this same file
    approved: int
    qa_passed: bool
    qa_checks: int
    seconds: float
    mode: str = "file"

    @property
    def reconciled(self) -> bool:
        """True when the file holds exactly the approved recipients."""
        return self.rows == self.approved


def _file_failed(engine: Engine, run_id: str, action: str, details: dict[str, Any],
                 error: HandoffError) -> HandoffError:
    """Audit a file-mode handoff that released nothing, fail the run; the error to raise."""
    audit.append(engine, run_id=run_id, step="handoff", action=action, actor=SYSTEM, details=details)
    runs.set_status(engine, run_id, runs.FAILED)
    return error


def _check_file_drop(engine: Engine, settings: Settings, run_id: str, staged: FileDrop,
                     fields: list[str], approved: int) -> dict[str, Any]:
    """Run the handoff_file suite on a staged drop and reconcile it; its audit details, or raise."""
    from campaignops.qa import run_handoff_file_qa

    qa = run_handoff_file_qa(staged.csv_path, staged.manifest_path,
                             home=settings.home.resolve(), required_fields=fields)
    manifest = read_manifest(staged.manifest_path) or {}
    rows = manifest.get("rows")
    details: dict[str, Any] = {  # rows and sha256 at the top: `campaignops audit show` lists them
        "rows": rows, "sha256": manifest.get("sha256"), "released": False, "mode": "file",
        "files": {"csv": staged.csv_path.name, "manifest": staged.manifest_path.name},  # no folder
        "reconciliation": {"approved": approved, "rows": rows, "matches": rows == approved},
        "qa": {"suite": qa.suite, "passed": qa.passed, "checks": len(qa.checks),
               "failed_critical": [c.name for c in qa.failed_critical]},
    }
    if not qa.passed:
        failed = ", ".join(f"{c.name} (observed {c.observed}, expected {c.threshold})"
                           for c in qa.failed_critical)
        raise _file_failed(engine, run_id, "file_qa_failed", details, HandoffRefused(
            f"handoff file for run {run_id} failed QA: {failed}; nothing was released"))
    if rows != approved:
        raise _file_failed(engine, run_id, "mismatch", details, HandoffMismatch(
            f"handoff mismatch for run {run_id}: approved {approved}, the file has {rows} rows; "
            "nothing was released"))
    return details


def drop_file(wh: Warehouse, settings: Settings, run_id: str, brief: Brief, outbox: Outbox) -> FileHandoff:
    """Write the CSV + manifest in staging, check them with the handoff_file suite, reconcile, release."""
    from campaignops.handoff.http import ledgered_batches

    engine = wh.engine
    if ledgered_batches(engine, run_id):
        raise HandoffRefused(
            f"run {run_id} already sent batches to the ESP over HTTP: nothing was written; "
            "rerun it with CAMPAIGNOPS_HANDOFF_MODE=http so the ledger resumes it"
        )
    started = time.perf_counter()
    folder = settings.resolved_file_drop_dir
    fields, fallbacks = personalisation(brief)
    runs.set_status(engine, run_id, runs.HANDING_OFF)
    staged = write_file_drop(engine, run_id, folder / STAGING_DIR, fields, fallbacks, outbox=outbox)
    try:
        details = _check_file_drop(engine, settings, run_id, staged, fields, outbox.recipients)
        # A file an earlier attempt released is never released again (the ESP may have
        # imported it and moved it away since); it must be the same file.
        prior = released_file(engine, run_id)
        if prior is not None and prior.get("sha256") != details["sha256"]:
            raise _file_failed(engine, run_id, "mismatch", details, HandoffMismatch(
                f"handoff mismatch for run {run_id}: its file was released with sha256 "
                f"{str(prior.get('sha256'))[:12]}, the run now makes {str(details['sha256'])[:12]}; "
                "nothing was released"))
        if prior is None:
            try:
                details["released"] = release_file_drop(staged, folder)[1]
            except HandoffMismatch as exc:  # another file of this run is already in the folder
                raise _file_failed(engine, run_id, "mismatch", details,
                                   HandoffMismatch(f"run {run_id}: {exc}")) from None
    finally:
        discard_file_drop(staged)  # what was not released (released files have moved)
    audit.append(engine, run_id=run_id, step="handoff", actor=SYSTEM, details=details,
                 action="file_written" if prior is None else "file_unchanged")
    return FileHandoff(
        run_id=run_id, csv_path=folder / staged.csv_path.name,
        manifest_path=folder / staged.manifest_path.name, rows=int(details["rows"]),
        sha256=str(details["sha256"]), released=bool(details["released"]),
        approved=int(details["reconciliation"]["approved"]), qa_passed=bool(details["qa"]["passed"]),
        qa_checks=int(details["qa"]["checks"]), seconds=round(time.perf_counter() - started, 3),
    )
