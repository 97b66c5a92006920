"""Watch task: one recurring campaign's recent runs published (table + chart), a moved run announced."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from campaignops import watch
from campaignops.resources import open_resources
from campaignops.settings import load_settings
from tasks.common import RETRY_DELAYS, TASK_RETRIES, artifact_key, retry_transient, run_resource

FLAGGED_EVENT = "campaignops.watch.flagged"


def write_chart(campaign_id: str, points: list[watch.RunPoint], folder: Path) -> Path:
    """The chart as ``folder/<campaign_id>.svg`` (rewritten each time); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', campaign_id)}.svg"
    path.write_text(watch.chart_svg(campaign_id, points), encoding="utf-8")
    return path.resolve()


def publish_watch(campaign_id: str, last: int = 8) -> dict[str, int]:
    """The campaign's table artifact and chart; the event for its newest run when that one moved."""
    settings = load_settings()
    points = watch.campaign_history(open_resources(settings).warehouse.engine, campaign_id, last)
    if not points:
        return {"runs": 0, "flagged": 0}
    chart = write_chart(campaign_id, points, settings.home / "watch")
    create_table_artifact(key=artifact_key(campaign_id, "watch"), table=watch.history_rows(points),
                          description=f"{campaign_id}: sends, exclusions by reason and what moved, run by run")
    newest = points[-1].comparison
    create_markdown_artifact(
        key=artifact_key(campaign_id, "watch-chart"),
        markdown="\n".join([f"## Watch: {campaign_id}", "", f"![sends and exclusions]({chart.as_uri()})",
                            "", f"Chart: `{chart}`", "", *(f"- {line}" for line in newest.lines())]),
        description="audience size and each exclusion reason over the runs")
    if newest.flagged:
        emit_event(event=FLAGGED_EVENT, resource=run_resource(newest.run_id, campaign_id),
                   payload={"checks": [n for n, bad in ((watch.CHURN_CHECK, newest.churn_flags),
                                                         (watch.PSI_CHECK, newest.psi_flags)) if bad],
                            "moved": points[-1].moved})
    return {"runs": len(points), "flagged": sum(p.comparison.flagged for p in points)}


@task(name="watch-campaign", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def watch_campaign(campaign_id: str, last: int = 8) -> dict[str, int]:
    """Publish one campaign's watch: table artifact, SVG chart, the flagged event if its newest run moved."""
    return publish_watch(campaign_id, last)
