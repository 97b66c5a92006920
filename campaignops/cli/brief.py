"""`campaignops brief`: check a brief, print the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import click

from campaignops.cli.common import user_errors, warehouse_of
from campaignops.errors import CampaignOpsError


@click.group()
def brief() -> None:
    """Campaign briefs."""


@brief.command("check")
@click.argument("brief_path", type=click.Path(path_type=Path))
@click.option("--offline", is_flag=True, help="Skip the warehouse checks (offers).")
@click.option("--count", "count", is_flag=True,
              help="Also count the send recipients in the warehouse now, against expected_audience.")
@click.pass_context
@user_errors
def brief_check(ctx: click.Context, brief_path: Path, offline: bool, count: bool) -> None:
    """Validate a brief; list every problem at once."""
    from campaignops.brief import load_brief
    from campaignops.intake import check_offers

    if offline and count:
        raise CampaignOpsError("--count reads the warehouse: drop --offline")
    b = load_brief(brief_path)
    if not offline:
        check_offers(warehouse_of(ctx), b, brief_path.name)
    click.echo(f"brief {brief_path.name} is valid: campaign {b.campaign_id}, "
               f"{len(b.cells)} cell(s), stages {', '.join(s.stage for s in b.approvals)}")
    if count:
        from campaignops.runs import utcnow
        from campaignops.segmentation import count_sends, size_warning

        sends = count_sends(warehouse_of(ctx), b, utcnow())
        lo, hi = b.expected_audience.min, b.expected_audience.max
        click.echo(f"send recipients now: {sends:,} (expected_audience {lo:,}..{hi:,})")
        warning = size_warning(b, sends)
        if warning:
            click.echo(warning, err=True)

    from campaignops.results import power_warning

    power = power_warning(b)
    if power is not None:  # a warning, not an error: the brief stays valid
        click.echo(f"warning: {power}", err=True)


@brief.command("schema")
def brief_schema() -> None:
    """Print the brief's JSON Schema (published as docs/brief.schema.json)."""
    from campaignops.brief import brief_json_schema

    click.echo(json.dumps(brief_json_schema(), indent=2, sort_keys=True))
