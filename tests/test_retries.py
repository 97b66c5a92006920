"""One retry layer per failure: a persistent 5xx is retried by the ESP client alone, at most
CAMPAIGNOPS_ESP_MAX_ATTEMPTS POSTs per batch, and never again by Prefect's task retries."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy.exc

from campaignops.errors import EspUnavailable, HandoffRefused, QAFailed
from campaignops.esp.sandbox import EspSandbox, Faults
from campaignops.handoff.batches import count_recipients
from tasks.common import is_transient
from tests.conftest import TOKEN
from tests.flowkit import approved_run

pytestmark = pytest.mark.flow


def test_a_persistent_503_is_posted_max_attempts_times_per_batch(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    from tasks.handoff import hand_off_audience

    @flow(name="only-the-handoff")
    def only_the_handoff(run_id: str) -> None:
        hand_off_audience(run_id)

    run_id, _ = approved_run(handoff_env["keys"])
    with EspSandbox(TOKEN, faults=Faults(error_before_store=1.0)) as failing:
        monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", failing.url)
        monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
        monkeypatch.setenv("CAMPAIGNOPS_ESP_BATCH_SIZE", "1000")
        monkeypatch.setenv("CAMPAIGNOPS_ESP_MAX_ATTEMPTS", "5")
        monkeypatch.setenv("CAMPAIGNOPS_ESP_BACKOFF_SECONDS", "0.01")
        with pytest.raises(EspUnavailable, match="gave up after 5 attempts"):
            only_the_handoff(run_id)  # the Prefect task, with its retry policy
        stats = failing.stats(run_id)
        delivered = failing.deliveries("winback-lapsed-customers", run_id)
    batches = -(-count_recipients(handoff_env["engine"], run_id) // 1000)
    assert batches == 2  # both in flight at once (4 may be)
    # every batch in flight when the first one gave up spent its 5 attempts; nothing more
    assert stats["requests"] == batches * 5
    assert stats.get("status_503") == batches * 5
    assert delivered == {}


@pytest.mark.unit
def test_what_a_task_retry_may_cure_is_decided_by_type() -> None:
    assert is_transient(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")))
    assert is_transient(ConnectionResetError())
    assert not is_transient(EspUnavailable("ESP batch r:batch-0: gave up after 8 attempts"))
    assert not is_transient(HandoffRefused("anything"))
    assert not is_transient(QAFailed("blocked"))
    assert not is_transient(KeyError("a bug"))
