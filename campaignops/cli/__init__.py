"""The `campaignops` command. User errors end with one line and a non-zero exit code.

One module per group of verbs: warehouse, brief, run (run, qa, resume), approvals (approvers,
approvals, approve, reject, revoke), audit, incidents (incident, remediate), operations (serve,
server, automations, kpis, calendar, esp-sandbox, esp-token, demo), sandbox (create, check,
info, save-key), results, watch, lifecycle (score, report, accept, sla, schema).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from campaignops.cli import (
    approvals,
    audit,
    brief,
    incidents,
    lifecycle,
    operations,
    results,
    run,
    sandbox,
    warehouse,
    watch,
)
from campaignops.cli.common import export_setting
from campaignops.cli.quiet import quiet_prefect_senders
from campaignops.errors import CampaignOpsError
from campaignops.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Local state folder [env CAMPAIGNOPS_HOME; default ./.campaignops].")
@click.option("--warehouse-url", default=None,
              help="SQLAlchemy URL of the warehouse [env CAMPAIGNOPS_WAREHOUSE_URL].")
@click.option("--esp-url", default=None, help="ESP base URL [env CAMPAIGNOPS_ESP_URL].")
@click.pass_context
def main(ctx: click.Context, home: Path | None, warehouse_url: str | None, esp_url: str | None) -> None:
    """Zero-defect campaign operations on Prefect."""
    # Flags win over the environment; exported so Prefect tasks read the same values.
    export_setting("HOME", home)
    export_setting("WAREHOUSE_URL", warehouse_url)
    export_setting("ESP_URL", esp_url)
    quiet_prefect_senders()
    ctx.ensure_object(dict)
    try:
        ctx.obj["settings"] = load_settings()
    except CampaignOpsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


for command in (
    warehouse.warehouse, brief.brief, run.run_cmd, run.qa_cmd, run.resume_cmd,
    approvals.approvers, approvals.approvals_cmd, approvals.approve_cmd, approvals.reject_cmd,
    approvals.revoke_cmd, audit.audit_group, incidents.incident_group, incidents.remediate_cmd,
    operations.automations_group, operations.kpis_cmd, operations.calendar_cmd,
    operations.esp_sandbox, operations.esp_token_group, operations.serve_cmd,
    operations.server_group, operations.demo, sandbox.sandbox_group, results.results_cmd,
    watch.watch_cmd,
    lifecycle.lifecycle_group,
):
    main.add_command(command)
