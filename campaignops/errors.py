"""Typed errors: every decision (retry, event, exit code) is made on the type, never the text.

A :class:`CampaignOpsError` is an outcome the user can act on: the CLI prints its first
line (no traceback) and exits with the class's ``exit_code``. ``retryable`` says whether a
Prefect task retry can help (only a transient infrastructure failure can); anything else
is final for the run, so a user error is never retried.
"""

from __future__ import annotations

from typing import ClassVar


class CampaignOpsError(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""

    exit_code: ClassVar[int] = 1
    retryable: ClassVar[bool] = False


class BriefError(CampaignOpsError):
    """A brief failed intake; the message lists every problem at once."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"brief {source} has {len(problems)} {noun}:\n{lines}")


class WarehouseError(CampaignOpsError):
    """The warehouse is unreachable or not in the expected shape."""

    exit_code = 3


class QAFailed(CampaignOpsError):
    """A critical QA expectation failed: the run is blocked (the verdict and result ride along)."""

    exit_code = 4

    def __init__(self, message: str, *, verdict: object = None, result: object = None) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.result = result


class ApprovalRejected(CampaignOpsError):
    """An approver rejected the run."""

    exit_code = 5


class ApprovalExpired(ApprovalRejected):
    """An approval wait ran past the brief's approval_timeout_hours."""

    exit_code = 6


class DecisionRefused(CampaignOpsError):
    """A submitted decision broke an approval rule; the run still waits."""

    exit_code = 5


class HandoffError(CampaignOpsError):
    """The handoff sent nothing more and the run cannot go on by itself."""

    exit_code = 7


class HandoffRefused(HandoffError):
    """The handoff refused to start or go on: nothing (more) was sent."""


class HandoffMismatch(HandoffError):
    """What the ESP (or the file) holds does not reconcile with what was approved."""


class EspUnavailable(HandoffError):
    """The ESP stayed unreachable or failing through the client's bounded retries.

    Final for the task (the client already spent its retry budget); the ledger lets
    ``campaignops resume RUN`` continue later without sending anyone twice.
    """


class EspRejected(HandoffError):
    """The ESP refused a request for good (400, 401, 403, 404, 422): not retried."""


class ServiceError(CampaignOpsError):
    """A local service (Prefect server, ESP sandbox) could not start or be reached."""

    exit_code = 8

