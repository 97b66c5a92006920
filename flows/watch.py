"""Watch the recurring campaigns daily: what moved, run by run (docs/watch.md)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from campaignops.resources import open_resources
from campaignops.watch import recurring_campaigns
from tasks.watch import watch_campaign


@flow(name="watch-campaigns", log_prints=False)
def watch_campaigns(runs: int = 8) -> dict[str, int]:
    """Each recurring campaign's last ``runs`` runs published; campaignops.watch.flagged when one moved."""
    campaigns = recurring_campaigns(open_resources().warehouse.engine)
    flagged = 0
    for campaign_id in campaigns:
        flagged += watch_campaign(campaign_id, runs)["flagged"]
    get_run_logger().info("watched %d recurring campaign(s): %d run(s) moved", len(campaigns), flagged)
    return {"campaigns": len(campaigns), "flagged": flagged}
