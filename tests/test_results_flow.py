"""The refresh-results flow: recent sent runs measured, one artifact and one chart per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaignops.deploy import load_spec, runner_deployments
from tests.test_results import RUN, sent_run

pytestmark = pytest.mark.flow


def test_refresh_results_publishes_an_artifact_and_a_chart(prefect_api: str, sqlite_url: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.results import refresh_results

    sent_run(sqlite_url, 500, 500, 0.3, 0.1)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    assert refresh_results(days=30) == {"runs": 1, "refreshed": 1, "skipped": 0}
    chart = tmp_path / "home" / "results" / f"{RUN}.svg"
    assert chart.read_text().startswith("<svg")
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"test-campaign-{RUN}-results"])))
    assert arts
    text = str(arts[0].data)
    assert "| all cells | 500 |" in text and "holdout" in text and f"{RUN}.svg" in text
    assert "@" not in text  # counts only, no address


def test_the_results_deployment_is_served_beside_the_campaigns() -> None:
    deps = runner_deployments(load_spec())
    by_name = {d.name: d for d in deps}
    assert by_name["refresh-results"].parameters == {"days": 30}
    assert {"weekly-newsletter", "winback-lapsed-customers"} <= set(by_name)
