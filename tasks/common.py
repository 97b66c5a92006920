"""What every campaignops task shares: retry policy and artifact keys."""

from __future__ import annotations

import re
from typing import Any

from campaignops.errors import CampaignOpsError, HandoffError

RETRIES = 2
RETRY_DELAYS: list[float] = [2.0, 10.0]


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry infrastructure failures; never retry a user error or a refused handoff."""
    try:
        state.result()
    except HandoffError as exc:
        # Only an ESP that stayed unreachable is worth another attempt (the ledger resumes it);
        # a refusal, a mismatch or a stale send time will not change by retrying.
        return "gave up after" in str(exc)
    except CampaignOpsError:
        return False
    except Exception:
        return True
    return False


def artifact_key(campaign_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a campaign's artifact."""
    slug = re.sub(r"[^a-z0-9-]+", "-", campaign_id.lower()).strip("-")
    return f"{slug}-{what}"[:100]
