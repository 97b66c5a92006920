"""`campaignops brief`: check a brief, print the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import click

from campaignops.cli.common import user_errors, warehouse_of


@click.group()
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
    from campaignops.intake import check_offers

    b = load_brief(brief_path)
    if not offline:
        check_offers(warehouse_of(ctx), b, brief_path.name)
    click.echo(f"brief {brief_path.name} is valid: campaign {b.campaign_id}, "
               f"{len(b.cells)} cell(s), stages {', '.join(s.stage for s in b.approvals)}")
    from campaignops.results import power_warning

    warning = power_warning(b)
    if warning is not None:  # a warning, not an error: the brief stays valid
        click.echo(f"warning: {warning}", err=True)


@brief.command("schema")
def brief_schema() -> None:
    """Print the brief's JSON Schema (published as docs/brief.schema.json)."""
    from campaignops.brief import brief_json_schema

    click.echo(json.dumps(brief_json_schema(), indent=2, sort_keys=True))
