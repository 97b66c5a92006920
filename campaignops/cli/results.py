"""`campaignops results RUN`: did the campaign work? Treated against the holdout, per cell."""

from __future__ import annotations

import click

from campaignops.cli.common import console, table, user_errors, warehouse_of


@click.command("results")
@click.argument("run_id")
@click.option("--window-days", type=click.IntRange(1, 365), default=None,
              help="Count conversions up to this many days after the send [default: until now].")
@click.pass_context
@user_errors
def results_cmd(ctx: click.Context, run_id: str, window_days: int | None) -> None:
    """A sent run's KPI: treated vs holdout per cell, lift, 95 % interval, p-value, target progress."""
    from campaignops.results import result_rows, run_results, summary_lines

    res = run_results(warehouse_of(ctx), run_id, window_days=window_days)
    out = console()
    out.print(table(result_rows(res), left=("cell",), title=f"Results of {res.run_id} ({res.campaign_id})"))
    for line in summary_lines(res):
        out.print(line)
