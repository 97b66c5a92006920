"""User-facing errors: one clear line naming the field and the fix."""


class CampaignOpsError(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""


class BriefError(CampaignOpsError):
    """A brief failed intake; the message lists every problem at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"brief {source} has {len(problems)} {noun}:\n{lines}")


class WarehouseError(CampaignOpsError):
    """The warehouse is unreachable or not in the expected shape."""


class QAFailed(CampaignOpsError):
    """A critical QA expectation failed: the run is blocked."""


class ApprovalRejected(CampaignOpsError):
    """An approver rejected the run, or the wait expired."""


class HandoffError(CampaignOpsError):
    """The ESP handoff failed or did not reconcile."""
