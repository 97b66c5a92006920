"""`campaignops watch`: recurring campaigns' size and composition over their recent runs (docs/watch.md)."""

from __future__ import annotations

import click

from campaignops.cli.common import console, table, user_errors, warehouse_of
from campaignops.errors import CampaignOpsError


@click.command("watch")
@click.option("--campaign", "campaign_id", default=None, help="One campaign [default: every recurring one].")
@click.option("--runs", "last", type=click.IntRange(2, 100), default=8, show_default=True,
              help="How many of each campaign's latest runs to show.")
@click.pass_context
@user_errors
def watch_cmd(ctx: click.Context, campaign_id: str | None, last: int) -> None:
    """Per recurring campaign: sends, exclusions by reason and what moved, run by run."""
    from campaignops import watch

    engine = warehouse_of(ctx).engine
    campaigns = [campaign_id] if campaign_id else watch.recurring_campaigns(engine)
    out = console()
    if not campaigns:
        out.print("no recurring campaign yet: the watch needs two sent runs of a campaign")
        return
    for cid in campaigns:
        points = watch.campaign_history(engine, cid, last)
        if not points:
            raise CampaignOpsError(f"--campaign {cid}: no segmented run of that campaign; "
                                   "`campaignops watch` lists every recurring one")
        out.print(table(watch.history_rows(points), left=("run", "as of", "status", "moved"),
                        title=f"{cid}: the last {len(points)} run(s)"))
        flagged = [p for p in points if p.comparison.flagged]
        out.print(f"{len(flagged)} of {len(points)} run(s) moved" if flagged else "no run moved")
        for p in flagged[-1:]:
            for line in p.comparison.lines():
                out.print(f"  {line}")
