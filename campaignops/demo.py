"""`campaignops demo`: the whole pipeline on the embedded default, from nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from campaignops import audit, local, runs
from campaignops.approvers import add_approver
from campaignops.brief import load_brief
from campaignops.errors import CampaignOpsError
from campaignops.resources import open_resources
from campaignops.resume import submit_decision
from campaignops.settings import Settings
from campaignops.warehouse import make_engine

RUN_TIMEOUT_SECONDS = 900


def run_demo(settings: Settings, brief_path: Path, customers: int,
             echo: Callable[[str], None] = print, sandbox_port: int = local.SANDBOX_PORT) -> str:
    """Build what is missing, run the brief through every stage with demo approvers."""
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    started_at = runs.utcnow()

    echo("1/6 Prefect server")
    started = local.start_server(settings)
    ui = local.prefect_api_url(settings.prefect_port).removesuffix("/api")
    echo(f"    {'started' if started else 'already running'} at {ui} (stop it with `make stop`)")
    local.apply_prefect_environment(settings)

    echo("2/6 warehouse and audit key")
    from campaignops.secrets import SecretMissing, audit_key, init_audit_key_file

    try:
        audit_key(settings)
    except SecretMissing:
        echo(f"    audit signing key made at {init_audit_key_file(settings)} (outside the warehouse)")
    from campaignops.synthetic import init_warehouse, warehouse_exists

    bare = make_engine(settings.resolved_warehouse_url)
    try:
        if warehouse_exists(bare):
            echo(f"    using {bare.url.render_as_string(hide_password=True)}")
        else:
            s = init_warehouse(bare, customers=customers, progress=True)
            echo(f"    built {s.customers:,} synthetic customers in {s.seconds:.1f} s")
    finally:
        bare.dispose()
    engine = open_resources(settings).warehouse.engine

    echo("3/6 ESP sandbox")
    url, started = local.start_sandbox(settings, sandbox_port)
    os.environ["CAMPAIGNOPS_ESP_URL"] = url
    os.environ["CAMPAIGNOPS_ESP_TOKEN"] = local.sandbox_token(settings)
    echo(f"    {'started' if started else 'already running'} at {url} "
         f"(its token: {local.sandbox_token_file(settings)})")

    echo("4/6 demo approvers")
    brief = load_brief(brief_path)
    keys: dict[str, str] = {}
    for stage in brief.approvals:
        name = stage.approvers[0]
        if name not in keys:
            keys[name] = add_approver(engine, name, kind="demo", replace=True)
        echo(f"    stage {stage.stage}: {name} [demo approver: the audit names it as such]")

    echo(f"5/6 campaign run: {brief_path.name}")
    log_path = home / "logs" / "demo-run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignops.cli", "run", str(brief_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ),
        )
        run_id = _approve_stages(settings, engine, brief.campaign_id, started_at, keys, proc, echo)
        try:
            proc.wait(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise CampaignOpsError(f"the demo run did not finish in {RUN_TIMEOUT_SECONDS} s: see {log_path}") from None
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise CampaignOpsError(f"the demo run failed: {tail[0]} (log: {log_path})")

    echo("6/6 results")
    _report(engine, run_id, echo, settings.resolved_anchor_file)
    echo(f"\nThe run in the Prefect UI: {local.prefect_ui_url(settings.prefect_port)}/runs/flow-run/{run_id}")
    echo(f"Audit trail: campaignops audit show {run_id}; verify the chain: campaignops audit verify")
    return run_id


def _approve_stages(settings: Settings, engine: object, campaign_id: str, since: object,
                    keys: dict[str, str], proc: subprocess.Popen[bytes],
                    echo: Callable[[str], None]) -> str:
    """Approve each stage of the new run as it comes up; return the run id."""
    from sqlalchemy.engine import Engine

    assert isinstance(engine, Engine)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    run_id: str | None = None
    done: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        for r in runs.waiting_runs(engine):
            if r.campaign_id != campaign_id or r.created_at < since or r.waiting_stage in done:  # type: ignore[operator]
                continue
            run_id = r.run_id
            stage = next(s for s in r.brief.approvals if s.stage == r.waiting_stage)
            name = stage.approvers[0]
            echo(f"    stage {stage.stage} waits; approving as {name} [demo approver]")
            submit_decision(settings, r.run_id, name, stage.stage, "approve", "",
                            keys[name], via="demo")
            done.add(stage.stage)
        time.sleep(1)
    if run_id is None:
        run_id = _latest_run(engine, campaign_id)
    return run_id


def _latest_run(engine: object, campaign_id: str) -> str:
    import sqlalchemy as sa

    from campaignops.schema import runs as runs_table

    assert isinstance(engine, sa.engine.Engine)
    with engine.connect() as conn:
        rid = conn.execute(
            sa.select(runs_table.c.run_id).where(runs_table.c.campaign_id == campaign_id)
            .order_by(runs_table.c.created_at.desc()).limit(1)
        ).scalar()
    if rid is None:
        raise CampaignOpsError("the demo run never registered: see .campaignops/logs/demo-run.log")
    return str(rid)


def _report(engine: object, run_id: str, echo: Callable[[str], None], anchors: Path) -> None:
    from sqlalchemy.engine import Engine

    assert isinstance(engine, Engine)
    trail = audit.trail(engine, run_id)
    seg = next((r.details for r in trail if r.step == "segmentation"), None)
    hand = next((r.details for r in trail if r.step == "handoff" and r.action == "reconciled"), None)
    if seg:
        echo(f"    matched {seg['matched']:,} -> eligible {seg['eligible']:,} -> control {seg['control']:,}"
             f" -> recipients {seg['recipients']:,} (cells {seg['cells']}, seeds {seg['seeds']})")
    if hand:
        rec = hand["reconciliation"]
        echo(f"    ESP sandbox: approved {rec['approved']:,}, accepted {rec['accepted']:,}, "
             f"rejected {rec['rejected']:,} -> {'RECONCILED' if rec['matches'] else 'MISMATCH'}")
    echo("    audit trail:")
    for r in trail:
        echo(f"      {r.seq:>5} {r.created_at[11:19]} {r.step:<18} {r.action:<12} {r.actor}")
    v = audit.verify(engine, anchors)
    echo(f"    audit chain: {'intact' if v.ok else 'BROKEN'} ({v.records} records)")
