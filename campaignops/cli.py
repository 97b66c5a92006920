"""The `campaignops` command. User errors end with one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from campaignops.errors import BriefError, CampaignOpsError
from campaignops.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_BRIEF = PROJECT_ROOT / "examples" / "briefs" / "winback.yaml"


def user_errors(fn: F) -> F:
    """Turn CampaignOpsError into a clean message and exit code (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BriefError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except CampaignOpsError as exc:
            click.echo(f"error: {str(exc).splitlines()[0]}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Local state folder [env CAMPAIGNOPS_HOME; default ./.campaignops].")
@click.option("--warehouse-url", default=None,
              help="SQLAlchemy URL of the warehouse [env CAMPAIGNOPS_WAREHOUSE_URL].")
@click.option("--esp-url", default=None, help="ESP base URL [env CAMPAIGNOPS_ESP_URL].")
@click.pass_context
def main(ctx: click.Context, home: Path | None, warehouse_url: str | None, esp_url: str | None) -> None:
    """Zero-defect campaign operations on Prefect."""
    # Flags win over the environment; export them so Prefect tasks read the same values.
    for name, value in (("HOME", home), ("WAREHOUSE_URL", warehouse_url), ("ESP_URL", esp_url)):
        if value is not None:
            os.environ[f"CAMPAIGNOPS_{name}"] = str(value)
    ctx.ensure_object(dict)
    try:
        ctx.obj["settings"] = load_settings()
    except CampaignOpsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


# --- warehouse -----------------------------------------------------------------

@main.group()
def warehouse() -> None:
    """The synthetic training warehouse."""


@warehouse.command("init")
@click.option("--customers", default=100_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--replace", is_flag=True, help="Rebuild a warehouse that already has data.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@user_errors
def warehouse_init(ctx: click.Context, customers: int, seed: int, replace: bool, quiet: bool) -> None:
    """Build the synthetic warehouse (PRODUCT.md data model), deterministic for a seed."""
    from campaignops.db import make_engine
    from campaignops.warehouse import init_warehouse

    s = _settings(ctx)
    s.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(s.resolved_warehouse_url)
    summary = init_warehouse(engine, customers=customers, seed=seed, progress=not quiet, replace=replace)
    click.echo(
        f"warehouse ready at {engine.url.render_as_string(hide_password=True)}: "
        f"{summary.customers:,} customers, {summary.suppressions:,} suppressions, "
        f"{summary.contact_history:,} contact history rows, {summary.offers} offers, "
        f"{summary.seed_recipients} seed recipients in {summary.seconds:.1f} s (seed {seed})"
    )


@warehouse.command("check")
@click.pass_context
@user_errors
def warehouse_check(ctx: click.Context) -> None:
    """Run the warehouse health suite (expectations/warehouse_health.json) in the database."""
    from campaignops.qa import run_warehouse_qa
    from campaignops.runs import utcnow
    from campaignops.steps import warehouse as wh

    s = _settings(ctx)
    wh(s)
    result = run_warehouse_qa(s.resolved_warehouse_url, home=s.home.resolve(), as_of=utcnow())
    for c in result.checks:
        verdict = "ok" if c.passed else ("FAILED" if c.critical else "warning")
        click.echo(f"  {verdict:<8} {c.name:<36} observed {c.observed}  expected {c.threshold}")
    if result.data_docs:
        click.echo(f"Data Docs: {result.data_docs}")
    if not result.passed:
        raise CampaignOpsError("warehouse health: critical checks failed: "
                               + ", ".join(c.name for c in result.failed_critical))
    click.echo(f"warehouse health: passed ({len(result.checks)} checks, "
               f"{len(result.warnings)} warning(s)) in {result.seconds:.1f} s")


# --- brief ---------------------------------------------------------------------

@main.group()
def brief() -> None:
    """Campaign briefs."""


@brief.command("check")
@click.argument("brief_path", type=click.Path(path_type=Path))
@click.option("--offline", is_flag=True, help="Skip the warehouse checks (offers).")
@click.pass_context
@user_errors
def brief_check(ctx: click.Context, brief_path: Path, offline: bool) -> None:
    """Validate a brief; list every problem at once."""
    from campaignops.brief import load_brief

    b = load_brief(brief_path)
    if not offline:
        from campaignops import steps

        engine = steps.warehouse(_settings(ctx))
        problems = steps.offer_problems(engine, b, steps.send_time(b))
        if problems:
            raise BriefError(brief_path.name, problems)
    click.echo(f"brief {brief_path.name} is valid: campaign {b.campaign_id}, "
               f"{len(b.cells)} cell(s), stages {', '.join(s.stage for s in b.approvals)}")


@brief.command("schema")
def brief_schema() -> None:
    """Print the brief's JSON Schema (published as docs/brief.schema.json)."""
    from campaignops.brief import brief_json_schema

    click.echo(json.dumps(brief_json_schema(), indent=2, sort_keys=True))


# --- runs ----------------------------------------------------------------------

def _run_flow(settings: Settings, brief_path: Path, mode: str) -> dict[str, Any]:
    from campaignops.local import apply_prefect_environment

    apply_prefect_environment(settings)
    from flows.campaign import campaign_run

    state = campaign_run(brief_path=str(brief_path.resolve()), mode=mode, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        if isinstance(result, CampaignOpsError):
            raise result
        _explain_from_register(settings, str(state.state_details.flow_run_id))
        raise CampaignOpsError(f"run failed: {type(result).__name__}: {str(result).splitlines()[0]}")
    if not state.is_completed():
        raise CampaignOpsError(f"run ended {state.name}: {state.message}")
    out: dict[str, Any] = result
    return out


def _explain_from_register(settings: Settings, run_id: str) -> None:
    """Raise the run register's reason for a run Prefect ended on its own (e.g. a pause timeout)."""
    from campaignops import runs
    from campaignops.steps import warehouse

    try:
        status = runs.get_run(warehouse(settings), run_id).status
    except CampaignOpsError:
        return
    if status == runs.EXPIRED:
        raise CampaignOpsError(f"run {run_id} expired: no approval within the brief's approval_timeout_hours")


def _print_waterfall(wf: dict[str, Any]) -> None:
    lines: list[tuple[str, int]] = [("matched the brief's rules", wf["matched"])]
    lines += [(f"- {s['label']}", s["removed"]) for s in wf["steps"] if s["removed"]]
    lines += [("eligible", wf["eligible"]), ("- control group (held out)", wf["control"])]
    lines += [(f"cell {name}", n) for name, n in wf["cells"].items()]
    lines += [("+ seed recipients", wf["seeds"]), ("recipients", wf["recipients"])]
    width = max(len(label) for label, _ in lines)
    for label, n in lines:
        click.echo(f"  {label:<{width}}  {n:>12,}")


@main.command("run")
@click.argument("brief_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Count only: the waterfall, no QA, approval or handoff.")
@click.option("--handoff", "handoff_mode", type=click.Choice(["http", "file"]), default=None,
              help="http: batches to the ESP; file: a checked CSV + manifest in the drop folder "
                   "[env CAMPAIGNOPS_HANDOFF_MODE; default http].")
@click.pass_context
@user_errors
def run_cmd(ctx: click.Context, brief_path: Path, dry_run: bool, handoff_mode: str | None) -> None:
    """One ad hoc campaign run (waits for the brief's approvals)."""
    settings = _settings(ctx)
    if handoff_mode is not None:  # the flow's steps read it from the environment
        os.environ["CAMPAIGNOPS_HANDOFF_MODE"] = handoff_mode
        settings = load_settings()
    out = _run_flow(settings, brief_path, "count" if dry_run else "full")
    click.echo(f"run {out['run_id']} {'counted' if dry_run else 'sent'}:")
    _print_waterfall(out["waterfall"])
    if "handoff" in out:
        _print_handoff(out["handoff"])


def _print_handoff(handoff: dict[str, Any]) -> None:
    rec = handoff["reconciliation"]
    reconciled = "yes" if rec["matches"] else "NO"
    if handoff.get("mode") == "file":
        rep = handoff["report"]
        click.echo(f"handoff: file {rep['csv_path']} ({rep['rows']:,} rows, sha256 {rep['sha256']}), "
                   f"approved {rec['approved']:,}, reconciled: {reconciled}"
                   + ("" if rep["released"] else " (already released, unchanged)"))
        return
    click.echo(f"handoff: approved {rec['approved']:,}, accepted {rec['accepted']:,}, "
               f"rejected {rec['rejected']:,}, reconciled: {reconciled}")


@main.command("qa")
@click.argument("brief_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@user_errors
def qa_cmd(ctx: click.Context, brief_path: Path) -> None:
    """Segmentation and QA only: no approval, no handoff."""
    out = _run_flow(_settings(ctx), brief_path, "qa")
    click.echo(f"run {out['run_id']}: QA {'passed' if out['qa']['passed'] else 'blocked'} "
               f"({out['qa']['checks']} checks, warnings: {', '.join(out['qa']['warnings']) or 'none'})")
    _print_waterfall(out["waterfall"])


# --- approvals -----------------------------------------------------------------

@main.group()
def approvers() -> None:
    """Approvers and their personal approval keys."""


@approvers.command("add")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Issue a new key for an existing approver.")
@click.pass_context
@user_errors
def approvers_add(ctx: click.Context, name: str, rotate: bool) -> None:
    """Register an approver; prints their personal key once (stored only as a salted hash)."""
    from campaignops.approvals import add_approver
    from campaignops.steps import warehouse as wh

    key = add_approver(wh(_settings(ctx)), name, replace=rotate)
    click.echo(f"approval key for {name} (shown once; keep it private):\n{key}\n"
               "Give it with CAMPAIGNOPS_APPROVER_KEY or at the prompt of `campaignops approve`.")


@main.command("approvals")
@click.pass_context
@user_errors
def approvals_cmd(ctx: click.Context) -> None:
    """What waits for approval, for whom, since when."""
    from campaignops import runs
    from campaignops.approvals import expires_at
    from campaignops.steps import expire_overdue
    from campaignops.steps import warehouse as wh

    engine = wh(_settings(ctx))
    for run_id in expire_overdue(engine):
        click.echo(f"{run_id} expired: its approval wait ran past the brief's timeout")
    waiting = runs.waiting_runs(engine)
    if not waiting:
        click.echo("nothing waits for approval")
        return
    for r in waiting:
        stage = next(s for s in r.brief.approvals if s.stage == r.waiting_stage)
        since = r.waiting_since or r.updated_at
        click.echo(f"{r.run_id}  {r.campaign_id}  stage {stage.stage}  approvers {', '.join(stage.approvers)}  "
                   f"since {since:%Y-%m-%d %H:%M} UTC  expires {expires_at(since, r.brief):%Y-%m-%d %H:%M} UTC  "
                   f"recipients {r.recipients or 0:,}")


def _approver_key(name: str) -> str:
    key: str = os.environ.get("CAMPAIGNOPS_APPROVER_KEY") or click.prompt(
        f"approval key for {name}", hide_input=True)
    return key


def _decide(ctx: click.Context, run_id: str, name: str, stage: str | None, decision: str,
            reason: str, standing: bool = False) -> str:
    from campaignops.resume import submit_decision

    return submit_decision(_settings(ctx), run_id, name, stage, decision, reason,
                           _approver_key(name), via="cli", standing=standing)


@main.command("approve")
@click.argument("run_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--stage", default=None, help="The stage you approve (default: the one waiting).")
@click.option("--standing", is_flag=True,
              help="Also grant a standing approval: later runs of this recurring campaign go on "
                   "without a person while QA is clean and the size in tolerance.")
@click.pass_context
@user_errors
def approve_cmd(ctx: click.Context, run_id: str, name: str, stage: str | None, standing: bool) -> None:
    """Approve the waiting stage of a run (key from CAMPAIGNOPS_APPROVER_KEY or a prompt)."""
    action = _decide(ctx, run_id, name, stage, "approve", "", standing)
    click.echo(f"run {run_id}: {action} by {name}" + (" (standing approval granted)" if standing else ""))


@main.command("revoke")
@click.argument("campaign_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--stage", default=None, help="Revoke one stage only (default: all).")
@click.pass_context
@user_errors
def revoke_cmd(ctx: click.Context, campaign_id: str, name: str, stage: str | None) -> None:
    """Revoke a recurring campaign's standing approval: later runs wait for a person again."""
    from campaignops import audit
    from campaignops.approvals import revoke_standing, verify_key
    from campaignops.steps import warehouse as wh

    engine = wh(_settings(ctx))
    if not verify_key(engine, name, _approver_key(name)):
        audit.append(engine, run_id=None, step="standing_approval", action="revoke_refused", actor=name,
                     details={"campaign_id": campaign_id, "why": "wrong or unregistered key"})
        raise CampaignOpsError(f"the approval key for {name} is wrong or not registered")
    n = revoke_standing(engine, campaign_id, stage, name)
    if n == 0:
        raise CampaignOpsError(f"campaign {campaign_id} has no active standing approval"
                               + (f" for stage {stage}" if stage else ""))
    audit.append(engine, run_id=None, step="standing_approval", action="revoked", actor=name,
                 details={"campaign_id": campaign_id, "stage": stage, "grants": n})
    click.echo(f"revoked {n} standing approval(s) of {campaign_id}")


@main.command("reject")
@click.argument("run_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--reason", required=True, help="Why: recorded in the audit.")
@click.option("--stage", default=None, help="The stage you reject (default: the one waiting).")
@click.pass_context
@user_errors
def reject_cmd(ctx: click.Context, run_id: str, name: str, reason: str, stage: str | None) -> None:
    """Reject the waiting stage of a run; the run ends and nothing is sent."""
    action = _decide(ctx, run_id, name, stage, "reject", reason)
    click.echo(f"run {run_id}: {action} by {name}")


# --- audit ---------------------------------------------------------------------

@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


def _print_trail(records: list[Any]) -> None:
    for r in records:
        keys = {k: v for k, v in r.details.items() if not isinstance(v, (dict, list)) or k in ("cells",)}
        summary = ", ".join(f"{k}={v}" for k, v in keys.items() if v not in (None, ""))
        click.echo(f"{r.seq:>6}  {r.created_at[:19]}  {r.step:<22} {r.action:<12} {r.actor:<34} {summary[:160]}")


@audit_group.command("show")
@click.argument("run_id")
@click.pass_context
@user_errors
def audit_show(ctx: click.Context, run_id: str) -> None:
    """A run's audit trail."""
    from campaignops import audit
    from campaignops.steps import warehouse as wh

    records = audit.trail(wh(_settings(ctx)), run_id)
    if not records:
        raise CampaignOpsError(f"no audit records for run {run_id}")
    _print_trail(records)


@audit_group.command("verify")
@click.pass_context
@user_errors
def audit_verify(ctx: click.Context) -> None:
    """Re-compute the whole hash chain; exit 1 at the first record that does not hold."""
    from campaignops import audit
    from campaignops.steps import warehouse as wh

    v = audit.verify(wh(_settings(ctx)))
    if not v.ok:
        raise CampaignOpsError(f"audit chain broken at record {v.first_bad_seq}: {v.problem}")
    click.echo(f"audit chain intact: {v.records} records")


# --- automations ---------------------------------------------------------------

@main.group("automations")
def automations_group() -> None:
    """Prefect automations that act on campaignops events."""


@automations_group.command("install")
@click.option("--webhook-url", envvar="CAMPAIGNOPS_ALERT_WEBHOOK_URL", required=True,
              help="Where alerts go [env CAMPAIGNOPS_ALERT_WEBHOOK_URL].")
@click.option("--escalate-after-hours", type=click.FloatRange(0.003, 24 * 30), default=4.0,
              show_default=True, help="Escalate an approval nobody decided within this time.")
@click.pass_context
@user_errors
def automations_install(ctx: click.Context, webhook_url: str, escalate_after_hours: float) -> None:
    """Install (or refresh) the automations on the Prefect server PREFECT_API_URL points at."""
    import datetime as dt

    from campaignops.automations import install
    from campaignops.local import apply_prefect_environment

    apply_prefect_environment(_settings(ctx))
    names = install(webhook_url, dt.timedelta(hours=escalate_after_hours))
    click.echo("installed: " + ", ".join(names))


# --- process KPIs and the calendar ---------------------------------------------

@main.command("kpis")
@click.option("--campaign", "campaign_id", default=None, help="One campaign only.")
@click.option("--since", "since_days", type=click.IntRange(1, 3650), default=None,
              help="Runs started in the last DAYS days.")
@click.option("--runs", "per_run", is_flag=True, help="Also list every run.")
@click.pass_context
@user_errors
def kpis_cmd(ctx: click.Context, campaign_id: str | None, since_days: int | None, per_run: bool) -> None:
    """Process KPIs: cycle time per stage, approval wait, back-and-forths, defects, on-time."""
    import datetime as dt

    from campaignops.kpis import campaign_kpis, render_kpis_text, run_kpis
    from campaignops.runs import utcnow
    from campaignops.steps import warehouse as wh

    engine = wh(_settings(ctx))
    since = utcnow() - dt.timedelta(days=since_days) if since_days else None
    runs_ = run_kpis(engine, since, campaign_id)
    campaigns = campaign_kpis(engine, since, campaign_id, from_runs=runs_)
    if not campaigns:
        raise CampaignOpsError("no runs yet" + (f" for campaign {campaign_id}" if campaign_id else ""))
    click.echo(render_kpis_text(campaigns, runs_ if per_run else None))


@main.command("calendar")
@click.option("--days", type=click.IntRange(1, 366), default=14, show_default=True)
@click.option("--overlap-threshold", type=click.FloatRange(0, 100), default=5.0, show_default=True,
              help="Flag a day when two campaigns share more than this percent of recipients.")
@click.option("--tz", default="UTC", show_default=True, help="Group days in this time zone.")
@click.pass_context
@user_errors
def calendar_cmd(ctx: click.Context, days: int, overlap_threshold: float, tz: str) -> None:
    """Scheduled and recent sends by day; flags days where campaigns overlap in audience."""
    from campaignops.calendar import calendar, render_calendar_text
    from campaignops.steps import warehouse as wh

    cal = calendar(wh(_settings(ctx)), days=days, overlap_threshold=overlap_threshold, tz=tz)
    click.echo(render_calendar_text(cal))


# --- local services ------------------------------------------------------------

@main.command("esp-sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--db", "db_path", default=None, type=click.Path(path_type=Path),
              help="SQLite file recording deliveries (default: in memory).")
@click.option("--rate-limit", default=0.0, type=click.FloatRange(0, 1), help="Share of 429 answers.")
@click.option("--error-before-store", default=0.0, type=click.FloatRange(0, 1), help="Share of 503 before storing.")
@click.option("--error-after-store", default=0.0, type=click.FloatRange(0, 1), help="Share of 500 after storing.")
@click.option("--drop-connection", default=0.0, type=click.FloatRange(0, 1), help="Share of dropped connections.")
@click.option("--latency-ms", default=0, type=int, help="Added latency per request.")
@click.option("--fault-seed", default=0, type=int)
@click.pass_context
@user_errors
def esp_sandbox(ctx: click.Context, host: str, port: int, db_path: Path | None, rate_limit: float,
                error_before_store: float, error_after_store: float, drop_connection: float,
                latency_ms: int, fault_seed: int) -> None:
    """Run the ESP sandbox (ESP_CONTRACT.md) with optional fault injection."""
    from campaignops.esp.sandbox import EspSandbox, Faults
    from campaignops.local import sandbox_token
    from campaignops.settings import esp_token_from_env

    settings = _settings(ctx)
    env_token = esp_token_from_env()
    if env_token is not None:
        token = env_token.get_secret_value()
    else:
        token = sandbox_token(settings)
        click.echo(f"token written to {settings.home.resolve() / 'esp-sandbox.token'}", err=True)
    faults = Faults(rate_limit=rate_limit, error_before_store=error_before_store,
                    error_after_store=error_after_store, drop_connection=drop_connection,
                    latency_ms=latency_ms, seed=fault_seed)
    sandbox = EspSandbox(token=token, db_path=str(db_path) if db_path else None, faults=faults,
                         host=host, port=port)
    click.echo(f"ESP sandbox listening on http://{host}:{port}", err=True)
    sandbox.serve_forever()


def _prefect_env(settings: Settings) -> None:
    """Prefect's environment for a command that talks to the Prefect API (home made first)."""
    from campaignops.local import apply_prefect_environment

    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    apply_prefect_environment(settings)


@main.group("esp-token")
def esp_token_group() -> None:
    """The ESP token in a Prefect Secret block (read when CAMPAIGNOPS_ESP_TOKEN is unset)."""


@esp_token_group.command("save")
@click.option("--block", "block", envvar="CAMPAIGNOPS_ESP_TOKEN_BLOCK", required=True,
              help="Secret block name, e.g. esp-token [env CAMPAIGNOPS_ESP_TOKEN_BLOCK].")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the token from standard input instead of a hidden prompt.")
@click.pass_context
@user_errors
def esp_token_save(ctx: click.Context, block: str, from_stdin: bool) -> None:
    """Store the ESP token in a Prefect Secret block (replacing it) on the Prefect API in use."""
    from pydantic import SecretStr

    from campaignops.settings import save_esp_token_block

    _prefect_env(_settings(ctx))
    if from_stdin:
        value = sys.stdin.read().strip()
    else:
        value = str(click.prompt("ESP token", hide_input=True, confirmation_prompt=True)).strip()
    where = save_esp_token_block(block, SecretStr(value))
    click.echo(f"ESP token saved in Secret block {block} on {where}; runs use it with "
               f"CAMPAIGNOPS_ESP_TOKEN_BLOCK={block} when CAMPAIGNOPS_ESP_TOKEN is unset")


@esp_token_group.command("check")
@click.pass_context
@user_errors
def esp_token_check(ctx: click.Context) -> None:
    """Say where a handoff would take the ESP token from (never prints it)."""
    from campaignops.settings import esp_token_from_env, load_esp_token

    settings = _settings(ctx)
    _prefect_env(settings)
    if esp_token_from_env() is not None:
        click.echo("ESP token: from CAMPAIGNOPS_ESP_TOKEN")
        return
    load_esp_token(settings)
    click.echo(f"ESP token: from Secret block {settings.esp_token_block} (CAMPAIGNOPS_ESP_TOKEN_BLOCK)")


@main.command("serve")
@click.option("--only", "names", multiple=True, help="Serve only these deployments (repeatable).")
@click.option("--every", "interval_seconds", type=float, default=None,
              help="Replace every schedule by an interval in seconds (to watch a schedule fire).")
@click.option("--dry-run", is_flag=True, help="Scheduled runs only count (no QA, approval or send).")
@click.pass_context
@user_errors
def serve_cmd(ctx: click.Context, names: tuple[str, ...], interval_seconds: float | None,
              dry_run: bool) -> None:
    """Serve deployments/prefect.yaml locally: schedules fire while this runs (Ctrl-C stops)."""
    from campaignops.deploy import serve
    from campaignops.local import apply_prefect_environment, server_running

    settings = _settings(ctx)
    apply_prefect_environment(settings)
    if not server_running() and "PREFECT_API_URL" not in os.environ:
        raise CampaignOpsError("no Prefect server: start one with `make server` "
                               "(or set PREFECT_API_URL), then serve")
    serve(list(names) or None, interval_seconds, "count" if dry_run else None)


@main.group("server")
def server_group() -> None:
    """The local Prefect server (UI on http://127.0.0.1:4200)."""


@server_group.command("start")
@click.pass_context
@user_errors
def server_start(ctx: click.Context) -> None:
    """Start the local Prefect server in the background (unless one runs)."""
    from campaignops.local import prefect_api_url, start_server

    started = start_server(_settings(ctx))
    click.echo(f"Prefect server {'started' if started else 'already running'}: "
               f"{prefect_api_url().removesuffix('/api')}")


@server_group.command("stop")
@click.pass_context
def server_stop(ctx: click.Context) -> None:
    """Stop the Prefect server and ESP sandbox started from this home."""
    from campaignops.local import stop_all

    stopped = stop_all(_settings(ctx))
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")


# --- demo ----------------------------------------------------------------------

@main.command("demo")
@click.option("--customers", default=100_000, show_default=True, type=int,
              help="Warehouse size if it has to be built.")
@click.pass_context
@user_errors
def demo(ctx: click.Context, customers: int) -> None:
    """Everything on the embedded default, from nothing: warehouse, sandbox, server, one run."""
    from campaignops.demo import run_demo

    run_demo(_settings(ctx), DEMO_BRIEF, customers, echo=click.echo)


if __name__ == "__main__":
    main()
