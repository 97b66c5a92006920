"""`campaignops warehouse`: the synthetic training warehouse, its health, campaignops' schema."""

from __future__ import annotations

import click

from campaignops.cli.common import console, settings_of, table, user_errors, warehouse_of
from campaignops.errors import CampaignOpsError


@click.group()
def warehouse() -> None:
    """The warehouse: build a synthetic one, check its health, upgrade campaignops' tables."""


@warehouse.command("init")
@click.option("--customers", default=100_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--replace", is_flag=True, help="Rebuild a warehouse that already has data.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engagement-events", "engagement", is_flag=True,
              help="Also generate the optional engagement_events table (docs/lifecycle.md).")
@click.pass_context
@user_errors
def warehouse_init(ctx: click.Context, customers: int, seed: int, replace: bool, quiet: bool,
                   engagement: bool) -> None:
    """Build the synthetic warehouse (the data model of docs/product.md), deterministic for a seed."""
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    s = settings_of(ctx)
    s.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(s.resolved_warehouse_url)
    try:
        summary = init_warehouse(engine, customers=customers, seed=seed, progress=not quiet,
                                 replace=replace)
        if engagement:
            from campaignops.engagement import generate_engagement_events

            events = generate_engagement_events(engine, summary.as_of, seed)
            click.echo(f"engagement_events: {events:,} events", err=True)
    finally:
        engine.dispose()
    click.echo(
        f"warehouse ready at {engine.url.render_as_string(hide_password=True)}: "
        f"{summary.customers:,} customers, {summary.suppressions:,} suppressions, "
        f"{summary.contact_history:,} contact history rows, {summary.offers} offers, "
        f"{summary.seed_recipients} seed recipients in {summary.seconds:.1f} s (seed {seed})"
    )


@warehouse.command("upgrade")
@click.pass_context
@user_errors
def warehouse_upgrade(ctx: click.Context) -> None:
    """Bring campaignops' own tables (co_*) to this version's schema (Alembic); the data model is untouched."""
    from campaignops import migrations
    from campaignops.warehouse import make_engine, require_inputs

    engine = make_engine(settings_of(ctx).resolved_warehouse_url)
    try:
        require_inputs(engine)
        before, after = migrations.upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"campaignops' tables are up to date (revision {after})")
    else:
        click.echo(f"campaignops' tables upgraded from revision {before or 'none'} to {after}")


@warehouse.command("check")
@click.pass_context
@user_errors
def warehouse_check(ctx: click.Context) -> None:
    """Run the warehouse health suite (expectations/warehouse_health.json) in the database."""
    from campaignops.qa import run_warehouse_qa
    from campaignops.runs import utcnow

    result = run_warehouse_qa(warehouse_of(ctx), home=settings_of(ctx).home.resolve(), as_of=utcnow())
    rows = [{"verdict": "ok" if c.passed else ("FAILED" if c.critical else "warning"), "check": c.name,
             "observed": c.observed, "expected": c.threshold} for c in result.checks]
    console().print(table(rows, left=("verdict", "check", "observed", "expected")))
    if result.data_docs:
        click.echo(f"Data Docs: {result.data_docs}")
    if not result.passed:
        raise CampaignOpsError("warehouse health: critical checks failed: "
                               + ", ".join(c.name for c in result.failed_critical))
    click.echo(f"warehouse health: passed ({len(result.checks)} checks, "
               f"{len(result.warnings)} warning(s)) in {result.seconds:.1f} s")
