"""The pipeline's steps as plain functions of a run id (Prefect tasks wrap them).

Each step reads what it needs from the warehouse by run id, does its work
there, writes one audit record, and returns a small JSON-ready summary with
counts only: never addresses or names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import audit, runs
from campaignops.approvals import (
    Decision,
    active_standing,
    decisions,
    expires_at,
    grant_standing,
    packet_digest,
    record_decision,
    refusal,
    refused_attempts,
    stage_decision,
)
from campaignops.brief import Brief, load_brief
from campaignops.db import ensure_project_tables, make_engine, offers, require_warehouse
from campaignops.errors import BriefError, CampaignOpsError, HandoffError, QAFailed
from campaignops.segmentation import audience_digest, sample_rows, segment
from campaignops.settings import Settings, load_esp_token, load_settings

if TYPE_CHECKING:  # pragma: no cover
    from campaignops.handoff import FileDrop

SYSTEM = "campaignops"
STAGING_DIR = ".staging"  # file drops are written and checked here, then released beside it
DRIFT_CHECK = "size_within_drift_of_recent_runs"


def warehouse(settings: Settings | None = None) -> Engine:
    """The warehouse engine with campaignops' own tables in place."""
    s = settings or load_settings()
    engine = make_engine(s.resolved_warehouse_url)
    require_warehouse(engine)
    ensure_project_tables(engine)
    return engine


def send_time(brief: Brief, now: dt.datetime | None = None) -> dt.datetime:
    """When the campaign goes out (naive UTC): send_at, or now for 'as soon as approved'."""
    if brief.send_at is not None:
        return brief.send_at.astimezone(dt.UTC).replace(tzinfo=None)
    return now or runs.utcnow()


def offer_problems(engine: Engine, brief: Brief, at: dt.datetime) -> list[str]:
    """Offers that do not exist in the warehouse or are not valid at the send time."""
    codes = brief.offer_codes
    if not codes:
        return []
    with engine.connect() as conn:
        found = {
            r.offer_code: r
            for r in conn.execute(sa.select(offers).where(offers.c.offer_code.in_(codes)))
        }
    problems = []
    for i, cell in enumerate(brief.cells):
        code = cell.offer_code
        if code is None:
            continue
        where = f"cells[{i}].offer_code"
        o = found.get(code)
        if o is None:
            problems.append(f"{where}: offer {code!r} does not exist in the warehouse's offers table")
        elif o.valid_to < at:
            problems.append(f"{where}: offer {code!r} expired on {o.valid_to:%Y-%m-%d}, before the send; pick a current offer")
        elif o.valid_from > at:
            problems.append(f"{where}: offer {code!r} starts on {o.valid_from:%Y-%m-%d}, after the send; pick a current offer")
    return problems


def intake(run_id: str, brief_path: str, dry_run: bool = False) -> dict[str, Any]:
    """Validate the brief (structure, rules, offers) and register the run."""
    engine = warehouse()
    try:
        brief = load_brief(brief_path)
    except BriefError as err:
        audit.append(engine, run_id=run_id, step="intake", action="rejected", actor=SYSTEM,
                     details={"source": Path(brief_path).name, "problems": len(err.problems)})
        raise
    as_of = runs.utcnow()
    problems = offer_problems(engine, brief, send_time(brief, as_of))
    if problems:
        audit.append(engine, run_id=run_id, step="intake", action="rejected", actor=SYSTEM,
                     details={"source": Path(brief_path).name, "problems": len(problems)})
        raise BriefError(Path(brief_path).name, problems)
    runs.register_run(engine, run_id, brief, Path(brief_path).name, as_of, dry_run)
    summary = {
        "campaign_id": brief.campaign_id,
        "brief_digest": brief.digest(),
        "cells": [c.name for c in brief.cells],
        "offers": brief.offer_codes,
        "stages": [s.stage for s in brief.approvals],
        "send_at": brief.send_at.isoformat() if brief.send_at else None,
        "dry_run": dry_run,
    }
    audit.append(engine, run_id=run_id, step="intake", action="accepted", actor=SYSTEM, details=summary)
    return summary


def segmentation(run_id: str) -> dict[str, Any]:
    """Materialise the audience in the warehouse; return the waterfall."""
    engine = warehouse()
    run = runs.get_run(engine, run_id)
    wf = segment(engine, run.brief, run_id, run.as_of)
    digest = audience_digest(engine, run_id)
    runs.set_status(engine, run_id, runs.SEGMENTED, audience_digest=digest, recipients=wf.recipients)
    details = wf.as_dict() | {"audience_digest": digest, "table": "co_audience"}
    audit.append(engine, run_id=run_id, step="segmentation", action="materialised", actor=SYSTEM,
                 details=details)
    return details | {"markdown": wf.markdown()}


def quality(run_id: str) -> dict[str, Any]:
    """Run the audience expectation suite where the data lives; raise QAFailed when blocked."""
    from campaignops.qa import render_markdown, run_audience_qa

    settings = load_settings()
    engine = warehouse(settings)
    run = runs.get_run(engine, run_id)
    result = run_audience_qa(
        settings.resolved_warehouse_url, run_id, run.brief,
        send_at=send_time(run.brief).replace(tzinfo=dt.UTC), home=settings.home.resolve(),
        recent_sizes=runs.recent_sizes(engine, run.campaign_id, run_id),
    )
    checks = [asdict(c) for c in result.checks]
    qa_digest = hashlib.sha256(json.dumps(checks, sort_keys=True, default=str).encode()).hexdigest()
    failed = [c.name for c in result.failed_critical]
    summary: dict[str, Any] = {
        "suite": result.suite,
        "passed": result.passed,
        "checks": len(result.checks),
        "failed_critical": failed,
        "warnings": [c.name for c in result.warnings],
        "applied": [c.name for c in result.checks],
        "qa_digest": qa_digest,
        "data_docs": str(result.data_docs) if result.data_docs else None,
        "seconds": round(result.seconds, 3),
    }
    audit.append(engine, run_id=run_id, step="qa", action="passed" if result.passed else "blocked",
                 actor=SYSTEM, details=summary)
    markdown = render_markdown(result)
    if not result.passed:
        runs.set_status(engine, run_id, runs.QA_BLOCKED)
        detail = ", ".join(f"{c.name} (observed {c.observed}, expected {c.threshold})"
                           for c in result.failed_critical)
        raise QAFailed(f"QA blocked run {run_id}: critical checks failed: {detail}")
    runs.set_status(engine, run_id, runs.QA_PASSED)
    return summary | {"markdown": markdown}


def approval_packet(run_id: str, stage: str, qa_summary: dict[str, Any],
                    waterfall: dict[str, Any]) -> dict[str, Any]:
    """The packet an approver reads, and the digest their approval binds to."""
    engine = warehouse()
    run = runs.get_run(engine, run_id)
    a_digest = audience_digest(engine, run_id)
    digest = packet_digest(run.brief_digest, a_digest, qa_summary["qa_digest"])
    b = run.brief
    st = next(s for s in b.approvals if s.stage == stage)
    rows = sample_rows(engine, run_id)
    lines: list[str] = [
        f"## Approval packet: {b.name} ({b.campaign_id}), stage `{stage}`",
        "",
        f"- run: `{run_id}`",
        f"- owner: {b.owner}; approvers for this stage: {', '.join(st.approvers)}",
        f"- objective: {b.objective}",
        f"- standing approval: {'allowed by the brief' if b.standing_approval == 'allowed' else 'not allowed'}",
        f"- send time: {b.send_at.isoformat() if b.send_at else 'as soon as the last approval is given'}",
        f"- recipients: **{waterfall['recipients']:,}** ({waterfall['seeds']} seeds), control held out: {waterfall['control']:,}",
        f"- QA: {'passed' if qa_summary['passed'] else 'BLOCKED'}, {qa_summary['checks']} checks, "
        f"warnings: {', '.join(qa_summary['warnings']) or 'none'}",
        f"- approval binds to packet digest `{digest[:16]}…` (brief `{run.brief_digest[:12]}…`, audience `{a_digest[:12]}…`)",
        "",
        "| cell | offer | recipients |",
        "|---|---|---:|",
    ]
    for c in b.cells:
        lines.append(f"| {c.name} | {c.offer_code or '-'} | {waterfall['cells'].get(c.name, 0):,} |")
    lines += ["", "Sample recipients (masked):", "", "| customer | address | first name | cell | offer |",
              "|---:|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['customer_id']} | {r['address']} | {r['first_name']} | {r['cell']} | {r['offer_code'] or '-'} |")
    lines += ["", f"Approve: `campaignops approve {run_id} --as NAME --stage {stage}` "
              "or fill the form on this paused run in the Prefect UI."]
    return {"packet_digest": digest, "markdown": "\n".join(lines), "stage": stage,
            "timeout_hours": b.approval_timeout_hours}


def open_wait(run_id: str, stage: str, digest: str) -> dict[str, Any]:
    """Mark the run as waiting for the stage (idempotent on replay); when the wait began."""
    engine = warehouse()
    run = runs.get_run(engine, run_id)
    if run.status == runs.AWAITING and run.waiting_stage == stage and run.waiting_since:
        since = run.waiting_since
    else:
        since = runs.utcnow()
        runs.set_status(engine, run_id, runs.AWAITING, waiting_stage=stage, waiting_since=since)
        st = next(s for s in run.brief.approvals if s.stage == stage)
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="waiting", actor=SYSTEM,
                     details={"packet_digest": digest, "approvers": len(st.approvers)})
    return {"since": since.isoformat(), "deadline": expires_at(since, run.brief).isoformat()}


def judge_decision(run_id: str, stage: str, approver: str, decision: str, reason: str, key: str,
                   via: str, digest: str, standing: bool = False) -> tuple[bool, str | None]:
    """Check a submitted decision against the rules; audit it; (accepted, refusal reason)."""
    from campaignops.approvals import approver_kind, verify_key

    engine = warehouse()
    run = runs.get_run(engine, run_id)
    d = Decision(stage=stage, approver=approver.strip(), decision=decision, reason=reason or "",
                 key_ok=verify_key(engine, approver.strip(), key), standing=standing)
    why = refusal(engine, run.brief, run_id, d)
    kind = approver_kind(engine, d.approver)
    actor = f"{d.approver} [demo approver]" if kind == "demo" else d.approver
    if why is not None:
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="refused", actor=actor,
                     details={"decision": decision, "why": why, "via": via})
        return False, why
    record_decision(engine, run_id, d, digest)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}",
                 action="approved" if decision == "approve" else "rejected",
                 actor=actor, details={"packet_digest": digest, "reason": d.reason or None,
                                       "via": via, "demo": kind == "demo",
                                       "standing_granted": standing and decision == "approve"})
    if standing and decision == "approve":
        grant_standing(engine, run.campaign_id, stage, d.approver, run_id)
    if decision == "reject":
        runs.set_status(engine, run_id, runs.REJECTED, waiting_stage=None)
    else:
        runs.set_status(engine, run_id, runs.APPROVED, waiting_stage=None)
    return True, None


def prior_decision(run_id: str, stage: str) -> dict[str, Any] | None:
    """The stage's recorded decision, when a replayed flow reaches a stage already decided."""
    d = stage_decision(warehouse(), run_id, stage)
    return None if d is None else {"decision": d["decision"], "approver": d["approver"],
                                   "reason": d["reason"]}


def next_attempt(run_id: str, stage: str) -> int:
    """The number of the next wait for a stage (refused decisions count)."""
    return refused_attempts(warehouse(), run_id, stage) + 1


def use_standing_approval(run_id: str, stage: str, qa: dict[str, Any], digest: str) -> str | None:
    """Approve the stage with an active standing approval when QA is clean and the size in
    tolerance; return the grantor, or None when a person must decide (audited either way)."""
    engine = warehouse()
    run = runs.get_run(engine, run_id)
    if run.brief.standing_approval != "allowed":
        return None
    grant = active_standing(engine, run.campaign_id, stage)
    if grant is None:
        return None
    why = None
    if not qa["passed"] or qa["warnings"]:
        why = f"QA has warnings: {', '.join(qa['warnings'])}" if qa["warnings"] else "QA did not pass"
    elif DRIFT_CHECK not in qa.get("applied", []):
        why = "no recent runs to check the audience size against"
    if why is not None:
        audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="standing_bypassed",
                     actor=SYSTEM, details={"why": why, "grant_id": grant.grant_id})
        return None
    record_decision(engine, run_id, Decision(stage, grant.granted_by, "approve", "", True), digest)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="approved",
                 actor=f"{grant.granted_by} [standing approval]",
                 details={"packet_digest": digest, "via": "standing", "grant_id": grant.grant_id,
                          "granted_in_run": grant.granted_in_run})
    runs.set_status(engine, run_id, runs.APPROVED, waiting_stage=None)
    return grant.granted_by


def expire(run_id: str, stage: str, engine: Engine | None = None) -> None:
    """Record (once) that a wait ran past its timeout: the run expires and sends nothing."""
    engine = engine or warehouse()
    if runs.get_run(engine, run_id).status == runs.EXPIRED:
        return
    runs.set_status(engine, run_id, runs.EXPIRED, waiting_stage=None)
    audit.append(engine, run_id=run_id, step=f"approval:{stage}", action="expired", actor=SYSTEM,
                 details={})


def expire_overdue(engine: Engine) -> list[str]:
    """Expire waits past their deadline whose process is gone (suspended runs); their ids."""
    now = runs.utcnow()
    expired = []
    for r in runs.waiting_runs(engine):
        since = r.waiting_since or r.updated_at
        if r.waiting_stage and expires_at(since, r.brief) < now:
            expire(r.run_id, r.waiting_stage, engine)
            expired.append(r.run_id)
    return expired


def _refuse_unless_approved(engine: Engine, run_id: str, brief: Brief, qa_digest: str) -> None:
    """Refuse (audited) unless every stage approved exactly this brief, audience and QA."""
    current = packet_digest(brief.digest(), audience_digest(engine, run_id), qa_digest)
    signed = [d for d in decisions(engine, run_id) if d["decision"] == "approve"]
    stages = {s.stage for s in brief.approvals}
    if {d["stage"] for d in signed} != stages or any(d["packet_digest"] != current for d in signed):
        audit.append(engine, run_id=run_id, step="handoff", action="refused", actor=SYSTEM,
                     details={"why": "audience, brief or QA changed after approval, or a stage is unsigned"})
        raise HandoffError(
            f"run {run_id}: what would be sent differs from what was approved "
            "(audience, brief or QA changed, or a stage is unsigned); nothing was sent, start a new run"
        )


def _released_file(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """The file a file-mode handoff of the run released (from the audit trail), if any."""
    for r in audit.trail(engine, run_id):
        if r.step == "handoff" and r.action == "file_written":
            return r.details
    return None


def handoff(run_id: str, qa_digest: str) -> dict[str, Any]:
    """Hand the approved audience off: idempotent ESP batches (http) or a checked file drop (file)."""
    from campaignops.handoff import check_send_time

    settings = load_settings()
    engine = warehouse(settings)
    b = runs.get_run(engine, run_id).brief
    # The handoff sends only what every stage approved: same brief, audience and QA.
    _refuse_unless_approved(engine, run_id, b, qa_digest)
    check_send_time(b.send_at, dt.datetime.now(dt.UTC),
                    dt.timedelta(minutes=settings.send_grace_minutes))
    if settings.handoff_mode == "file":
        return file_handoff(engine, settings, run_id, b)
    return http_handoff(engine, settings, run_id, b)


def _personalisation(b: Brief) -> tuple[list[str], dict[str, str]]:
    """The brief's required personalisation fields and their fallbacks, as handoff takes them."""
    return [str(f) for f in b.content.required_fields], {str(k): v for k, v in b.content.fallbacks.items()}


def http_handoff(engine: Engine, settings: Settings, run_id: str, b: Brief) -> dict[str, Any]:
    """Post the approved audience to the ESP in idempotent batches, then reconcile."""
    from campaignops.esp.client import EspClient
    from campaignops.handoff import reconcile, send_audience

    released = _released_file(engine, run_id)
    if released is not None:
        raise HandoffError(
            f"run {run_id} was already handed off as file {released['files']['csv']}: nothing was sent; "
            "rerun it with CAMPAIGNOPS_HANDOFF_MODE=file"
        )
    try:  # before the first batch: a missing token sends nothing
        token = load_esp_token(settings)
    except CampaignOpsError as exc:
        raise HandoffError(f"run {run_id}: nothing was sent: {exc}") from None
    # A rerun must rebuild exactly the batches (and keys) of the first attempt.
    batch_size = runs.get_batch_size(engine, run_id) or settings.esp_batch_size
    runs.set_status(engine, run_id, runs.HANDING_OFF, batch_size=batch_size)
    fields, fallbacks = _personalisation(b)
    with EspClient(settings.esp_url, token, timeout=settings.esp_timeout_seconds) as client:
        report = send_audience(
            engine, client, campaign_id=b.campaign_id, run_id=run_id,
            template_id=b.content.template_id, send_at=b.send_at,
            batch_size=batch_size, fields=fields, fallbacks=fallbacks,
        )
        rec = reconcile(engine, client, b.campaign_id, run_id)
    details = {"report": asdict(report), "reconciliation": asdict(rec)}
    if not rec.matches:
        audit.append(engine, run_id=run_id, step="handoff", action="mismatch", actor=SYSTEM, details=details)
        runs.set_status(engine, run_id, runs.FAILED)
        raise HandoffError(
            f"handoff mismatch for run {run_id}: approved {rec.approved}, ESP accepted {rec.accepted} "
            f"and rejected {rec.rejected}"
        )
    audit.append(engine, run_id=run_id, step="handoff", action="reconciled", actor=SYSTEM, details=details)
    return {"mode": "http", **details}


def _file_failed(engine: Engine, run_id: str, action: str, details: dict[str, Any],
                 message: str) -> HandoffError:
    """Audit a file-mode handoff that released nothing, fail the run; the error to raise."""
    audit.append(engine, run_id=run_id, step="handoff", action=action, actor=SYSTEM, details=details)
    runs.set_status(engine, run_id, runs.FAILED)
    return HandoffError(message)


def _check_file_drop(engine: Engine, settings: Settings, run_id: str, staged: FileDrop,
                     fields: list[str]) -> dict[str, Any]:
    """Run the handoff_file suite on a staged drop and reconcile it; its audit details, or raise."""
    from campaignops.handoff import count_recipients, read_manifest
    from campaignops.qa import run_handoff_file_qa

    qa = run_handoff_file_qa(staged.csv_path, staged.manifest_path,
                             home=settings.home.resolve(), required_fields=fields)
    manifest = read_manifest(staged.manifest_path) or {}
    approved, rows = count_recipients(engine, run_id), manifest.get("rows")
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
        raise _file_failed(engine, run_id, "file_qa_failed", details,
                           f"handoff file for run {run_id} failed QA: {failed}; nothing was released")
    if rows != approved:
        raise _file_failed(engine, run_id, "mismatch", details,
                           f"handoff mismatch for run {run_id}: approved {approved}, the file has "
                           f"{rows} rows; nothing was released")
    return details


def file_handoff(engine: Engine, settings: Settings, run_id: str, b: Brief) -> dict[str, Any]:
    """Write the CSV + manifest in staging, check it with the handoff_file suite, reconcile, release."""
    from campaignops.handoff import (
        discard_file_drop,
        ledgered_batches,
        release_file_drop,
        write_file_drop,
    )

    if ledgered_batches(engine, run_id):
        raise HandoffError(
            f"run {run_id} already sent batches to the ESP over HTTP: nothing was written; "
            "rerun it with CAMPAIGNOPS_HANDOFF_MODE=http so the ledger resumes it"
        )
    started = time.perf_counter()
    folder = settings.resolved_file_drop_dir
    fields, fallbacks = _personalisation(b)
    runs.set_status(engine, run_id, runs.HANDING_OFF)
    staged = write_file_drop(engine, run_id, folder / STAGING_DIR, fields, fallbacks)
    try:
        details = _check_file_drop(engine, settings, run_id, staged, fields)
        # A file an earlier attempt released is never released again (the ESP may have
        # imported it and moved it away since); it must be the same file.
        prior = _released_file(engine, run_id)
        if prior is not None and prior.get("sha256") != details["sha256"]:
            raise _file_failed(engine, run_id, "mismatch", details,
                               f"handoff mismatch for run {run_id}: its file was released "
                               f"with sha256 {str(prior.get('sha256'))[:12]}, the run now makes "
                               f"{str(details['sha256'])[:12]}; nothing was released")
        if prior is None:
            try:
                details["released"] = release_file_drop(staged, folder)[1]
            except HandoffError as exc:  # another file of this run is already in the folder
                raise _file_failed(engine, run_id, "mismatch", details, f"run {run_id}: {exc}") from None
    finally:
        discard_file_drop(staged)  # what was not released (released files have moved)
    audit.append(engine, run_id=run_id, step="handoff", actor=SYSTEM, details=details,
                 action="file_written" if prior is None else "file_unchanged")
    report = {k: details[k] for k in ("rows", "sha256", "released")} | details["files"]
    report |= {"folder": str(folder), "csv_path": str(folder / staged.csv_path.name),
               "seconds": round(time.perf_counter() - started, 3)}
    return {"mode": "file", "report": report, "reconciliation": details["reconciliation"],
            "qa": details["qa"]}


def contact_history(run_id: str) -> dict[str, Any]:
    """Write contact history once per recipient (feeds the next frequency cap)."""
    from campaignops.handoff import write_contact_history

    engine = warehouse()
    run = runs.get_run(engine, run_id)
    written = write_contact_history(engine, run_id, run.campaign_id, send_time(run.brief))
    runs.set_status(engine, run_id, runs.SENT)
    audit.append(engine, run_id=run_id, step="contact_history", action="written", actor=SYSTEM,
                 details={"rows": written})
    return {"rows": written}


def finish_dry_run(run_id: str) -> None:
    """Close a run that only counted."""
    engine = warehouse()
    runs.set_status(engine, run_id, runs.COUNTED)
    audit.append(engine, run_id=run_id, step="run", action="counted", actor=SYSTEM, details={})


def fail(run_id: str, why: str) -> None:
    """Record that a run failed with a reason that carries no personal data."""
    try:
        engine = warehouse()
        try:
            status = runs.get_run(engine, run_id).status
        except CampaignOpsError:
            status = None  # intake never registered the run
        if status in (runs.REJECTED, runs.EXPIRED, runs.QA_BLOCKED):
            return  # the step that ended the run has audited why
        if status is not None:
            runs.set_status(engine, run_id, runs.FAILED)
        audit.append(engine, run_id=run_id, step="run", action="failed", actor=SYSTEM,
                     details={"why": why[:500]})
    except CampaignOpsError:
        pass


def campaign_kpi_rows(campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's process KPIs as table rows (for a Prefect table artifact)."""
    from campaignops.kpis import campaign_kpis, kpi_table_rows

    return kpi_table_rows(campaign_kpis(warehouse(), campaign_id=campaign_id))
