"""Operations: serving deployments, the local services, automations, KPIs, the calendar, the demo."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from campaignops.cli.common import (
    PROJECT_ROOT,
    console,
    prefect_env,
    settings_of,
    table,
    user_errors,
    warehouse_of,
)
from campaignops.errors import CampaignOpsError

if TYPE_CHECKING:  # pragma: no cover
    from campaignops.kpis import CampaignKpi, RunKpi


def print_kpis(campaigns: Sequence[CampaignKpi], per_run: Sequence[RunKpi] | None = None) -> None:
    """The KPI tables: campaigns, then (if asked) runs."""
    from campaignops.kpis import ASAP_GRACE_MINUTES, kpi_table_rows, run_table_rows

    out = console()
    out.print(table(kpi_table_rows(campaigns), left=("campaign",), title="Campaigns"))
    if per_run:
        out.print()
        out.print(table(run_table_rows(per_run), title="Runs",
                        left=("run", "campaign", "status", "accepted", "approval waits")))
    out.print()
    out.print(f"on time: handoff reconciled by send_at, or within {ASAP_GRACE_MINUTES:g} min of "
              "the last approval when the brief has no send_at")


# --- automations ---------------------------------------------------------------

@click.group("automations")
def automations_group() -> None:
    """Prefect automations that act on campaignops events."""


@automations_group.command("install")
@click.option("--webhook-url", envvar="CAMPAIGNOPS_ALERT_WEBHOOK_URL", required=True,
              help="Where alerts go [env CAMPAIGNOPS_ALERT_WEBHOOK_URL].")
@click.option("--escalate-after-hours", type=click.FloatRange(0.003, 24 * 30), default=4.0,
              show_default=True, help="Escalate an approval nobody decided within this time.")
@click.option("--legal-webhook-url", envvar="CAMPAIGNOPS_LEGAL_WEBHOOK_URL", default=None,
              help="Where incidents that need legal go [env CAMPAIGNOPS_LEGAL_WEBHOOK_URL; "
                   "default: the alerts webhook].")
@click.pass_context
@user_errors
def automations_install(ctx: click.Context, webhook_url: str, escalate_after_hours: float,
                        legal_webhook_url: str | None) -> None:
    """Install (or refresh) the automations on the Prefect server PREFECT_API_URL points at."""
    import datetime as dt

    from campaignops.automations import install
    from campaignops.local import apply_prefect_environment

    apply_prefect_environment(settings_of(ctx))
    names = install(webhook_url, dt.timedelta(hours=escalate_after_hours), legal_webhook_url)
    click.echo("installed: " + ", ".join(names))


# --- process KPIs and the calendar ---------------------------------------------

@click.command("kpis")
@click.option("--campaign", "campaign_id", default=None, help="One campaign only.")
@click.option("--since", "since_days", type=click.IntRange(1, 3650), default=None,
              help="Runs started in the last DAYS days.")
@click.option("--runs", "per_run", is_flag=True, help="Also list every run.")
@click.pass_context
@user_errors
def kpis_cmd(ctx: click.Context, campaign_id: str | None, since_days: int | None, per_run: bool) -> None:
    """Process KPIs: cycle time per stage, approval wait, back-and-forths, defects, on-time."""
    import datetime as dt

    from campaignops.kpis import campaign_kpis, run_kpis
    from campaignops.runs import utcnow

    engine = warehouse_of(ctx).engine
    since = utcnow() - dt.timedelta(days=since_days) if since_days else None
    runs_ = run_kpis(engine, since, campaign_id)
    campaigns = campaign_kpis(engine, since, campaign_id, from_runs=runs_)
    if not campaigns:
        raise CampaignOpsError("no runs yet" + (f" for campaign {campaign_id}" if campaign_id else ""))
    print_kpis(campaigns, runs_ if per_run else None)


@click.command("calendar")
@click.option("--days", type=click.IntRange(1, 366), default=14, show_default=True)
@click.option("--overlap-threshold", type=click.FloatRange(0, 100), default=5.0, show_default=True,
              help="Flag a day when two campaigns share more than this percent of recipients.")
@click.option("--tz", default="UTC", show_default=True, help="Group days in this time zone.")
@click.pass_context
@user_errors
def calendar_cmd(ctx: click.Context, days: int, overlap_threshold: float, tz: str) -> None:
    """Scheduled and recent sends by day; flags days where campaigns overlap in audience."""
    from campaignops.calendar import calendar, render_calendar_text

    cal = calendar(warehouse_of(ctx).engine, days=days, overlap_threshold=overlap_threshold, tz=tz)
    click.echo(render_calendar_text(cal))


# --- local services ------------------------------------------------------------

@click.command("esp-sandbox")
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
    """Run the ESP sandbox (docs/esp-contract.md) with optional fault injection."""
    from campaignops.esp.sandbox import EspSandbox, Faults
    from campaignops.local import sandbox_token, sandbox_token_file
    from campaignops.secrets import esp_token_from_env

    settings = settings_of(ctx)
    env_token = esp_token_from_env()
    if env_token is not None:
        token = env_token.get_secret_value()
    else:
        token = sandbox_token(settings)
        click.echo(f"token in {sandbox_token_file(settings)} (runs read it with "
                   f"CAMPAIGNOPS_ESP_TOKEN=$(cat {sandbox_token_file(settings)}))", err=True)
    faults = Faults(rate_limit=rate_limit, error_before_store=error_before_store,
                    error_after_store=error_after_store, drop_connection=drop_connection,
                    latency_ms=latency_ms, seed=fault_seed)
    sandbox = EspSandbox(token=token, db_path=str(db_path) if db_path else None, faults=faults,
                         host=host, port=port)
    try:
        sandbox._bind()
    except OSError as exc:
        from campaignops.errors import ServiceError

        raise ServiceError(f"the ESP sandbox cannot listen on {host}:{port} "
                           f"({exc.strerror or type(exc).__name__}): pick a free port with --port") from None
    click.echo(f"ESP sandbox listening on {sandbox.url}", err=True)
    sandbox.serve_forever()


@click.group("esp-token")
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

    from campaignops.secrets import save_block

    prefect_env(settings_of(ctx))
    if from_stdin:
        value = sys.stdin.read().strip()
    else:
        value = str(click.prompt("ESP token", hide_input=True, confirmation_prompt=True)).strip()
    where = save_block(block, SecretStr(value), "ESP token")
    click.echo(f"ESP token saved in Secret block {block} on {where}; runs use it with "
               f"CAMPAIGNOPS_ESP_TOKEN_BLOCK={block} when CAMPAIGNOPS_ESP_TOKEN is unset")


@esp_token_group.command("check")
@click.pass_context
@user_errors
def esp_token_check(ctx: click.Context) -> None:
    """Say where a handoff would take the ESP token from (never prints it)."""
    from campaignops.secrets import esp_token_from_env, load_esp_token

    settings = settings_of(ctx)
    prefect_env(settings)
    if esp_token_from_env() is not None:
        click.echo("ESP token: from CAMPAIGNOPS_ESP_TOKEN")
        return
    load_esp_token(settings)
    click.echo(f"ESP token: from Secret block {settings.esp_token_block} (CAMPAIGNOPS_ESP_TOKEN_BLOCK)")


@click.command("serve")
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

    settings = settings_of(ctx)
    apply_prefect_environment(settings)
    if not server_running() and "PREFECT_API_URL" not in os.environ:
        raise CampaignOpsError("no Prefect server: start one with `make server` "
                               "(or set PREFECT_API_URL), then serve")
    serve(list(names) or None, interval_seconds, "count" if dry_run else None)


@click.group("server")
def server_group() -> None:
    """The local Prefect server (UI on http://127.0.0.1:4200, or --port)."""


@server_group.command("start")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of the server and its UI [env CAMPAIGNOPS_PREFECT_PORT; default 4200].")
@click.pass_context
@user_errors
def server_start(ctx: click.Context, port: int | None) -> None:
    """Start the local Prefect server in the background (unless one runs)."""
    from campaignops.local import prefect_api_url, start_server

    settings = settings_of(ctx)
    port = port or settings.prefect_port
    started = start_server(settings, port)
    click.echo(f"Prefect server {'started' if started else 'already running'}: "
               f"{prefect_api_url(port).removesuffix('/api')}"
               + ("" if port == 4200 else f" (other commands find it with CAMPAIGNOPS_PREFECT_PORT={port})"))


@server_group.command("stop")
@click.pass_context
def server_stop(ctx: click.Context) -> None:
    """Stop the Prefect server and ESP sandbox started from this home."""
    from campaignops.local import stop_all

    stopped = stop_all(settings_of(ctx))
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")


# --- demo ----------------------------------------------------------------------

@click.command("demo")
@click.option("--customers", default=100_000, show_default=True, type=int,
              help="Warehouse size if it has to be built.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of the Prefect server and UI [env CAMPAIGNOPS_PREFECT_PORT; default 4200].")
@click.option("--sandbox-port", type=click.IntRange(1, 65535), default=8765, show_default=True,
              help="Port of the ESP sandbox.")
@click.pass_context
@user_errors
def demo(ctx: click.Context, customers: int, port: int | None, sandbox_port: int) -> None:
    """Everything on the embedded default, from nothing: warehouse, sandbox, server, one run."""
    from campaignops.cli.common import export_setting
    from campaignops.demo import run_demo
    from campaignops.settings import load_settings

    settings = settings_of(ctx)
    if port is not None:  # the demo's run (a subprocess) finds the server on it
        export_setting("PREFECT_PORT", port)
        settings = load_settings()
    run_demo(settings, PROJECT_ROOT / "examples" / "briefs" / "winback.yaml", customers,
             echo=click.echo, sandbox_port=sandbox_port)
