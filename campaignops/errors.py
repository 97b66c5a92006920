"""User-facing errors: one clear line naming the field and the fix."""

from __future__ import annotations

from campaignops.intake_limits import MAX_LINE, MAX_PROBLEMS_SHOWN, MAX_SOURCE
from campaignops.textsafe import clip


class CampaignOpsError(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""


class BriefError(CampaignOpsError):
    """A brief failed intake; the message lists every problem at once.

    Safe to print: each problem is escaped onto one bounded line, and past the
    first MAX_PROBLEMS_SHOWN the message says how many more there are.
    `.problems` holds every problem (escaped), `.count` how many.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = clip(str(source), MAX_SOURCE)
        self.problems = list(dict.fromkeys(clip(str(p), MAX_LINE) for p in problems))
        self.count = len(self.problems)
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [f"  - {p}" for p in shown]
        if self.count > len(shown):
            lines.append(f"  - and {self.count - len(shown):,} more; fix these and check again")
        noun = "problem" if self.count == 1 else "problems"
        super().__init__(f"brief {self.source} has {self.count:,} {noun}:\n" + "\n".join(lines))

    def __reduce__(self) -> tuple[type[BriefError], tuple[str, list[str]]]:
        """Pickle by source and problems (Prefect may carry the error across processes)."""
        return (BriefError, (self.source, self.problems))


class WarehouseError(CampaignOpsError):
    """The warehouse is unreachable or not in the expected shape."""


class QAFailed(CampaignOpsError):
    """A critical QA expectation failed: the run is blocked."""


class ApprovalRejected(CampaignOpsError):
    """An approver rejected the run, or the wait expired."""


class HandoffError(CampaignOpsError):
    """The ESP handoff failed or did not reconcile."""
