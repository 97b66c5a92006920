"""Typed errors: every decision (retry, event, exit code) is made on the type, never the text.

A :class:`CampaignOpsError` is an outcome the user can act on: the CLI prints its first
line (no traceback) and exits with the class's ``exit_code``. ``retryable`` says whether a
Prefect task retry can help (only a transient infrastructure failure can); anything else
is final for the run, so a user error is never retried.
"""

from __future__ import annotations

from typing import ClassVar

from campaignops.intake_limits import MAX_LINE, MAX_PROBLEMS_SHOWN, MAX_SOURCE
from campaignops.textsafe import clip


class CampaignOpsError(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""

    exit_code: ClassVar[int] = 1
    retryable: ClassVar[bool] = False


class BriefError(CampaignOpsError):
    """A brief failed intake; the message lists every problem at once.

    Safe to print: each problem is escaped onto one bounded line, and past the
    first MAX_PROBLEMS_SHOWN the message says how many more there are.
    `.problems` holds every problem (escaped), `.count` how many.
    """

    exit_code = 2
    noun: ClassVar[str] = "brief"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = clip(str(source), MAX_SOURCE)
        self.problems = list(dict.fromkeys(clip(str(p), MAX_LINE) for p in problems))
        self.count = len(self.problems)
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [f"  - {p}" for p in shown]
        if self.count > len(shown):
            lines.append(f"  - and {self.count - len(shown):,} more; fix these and check again")
        noun = "problem" if self.count == 1 else "problems"
        super().__init__(f"{self.noun} {self.source} has {self.count:,} {noun}:\n" + "\n".join(lines))

    def __reduce__(self) -> tuple[type[BriefError], tuple[str, list[str]]]:
        """Pickle by source and problems (Prefect may carry the error across processes)."""
        return (type(self), (self.source, self.problems))


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


class SandboxHandoffRefused(HandoffRefused):
    """A run on a sandbox warehouse may hand off only to the ESP sandbox or a file drop."""


class PreflightFailed(HandoffRefused):
    """Something the handoff will need is missing or unreachable, found before anyone is
    asked to approve: nothing was asked, nothing was sent."""

    exit_code = 10


class AuditBroken(CampaignOpsError):
    """The audit chain or its anchors do not verify."""

    exit_code = 9


class ServiceError(CampaignOpsError):
    """A local service (Prefect server, ESP sandbox) could not start or be reached."""

    exit_code = 8



class SandboxError(CampaignOpsError):
    """A sandbox could not be built or checked: no key, a collision, a target in use."""

    exit_code = 11


class SandboxCheckFailed(SandboxError):
    """`campaignops sandbox check` found a difference or a production value in the sandbox."""

    exit_code = 12


class ResultsUnavailable(CampaignOpsError):
    """A run's results cannot be measured: unknown run, never sent, or no send time."""

    exit_code = 13


class NotFound(CampaignOpsError):
    """A run, an incident or an offer named on the command line does not exist."""

    exit_code = 14


class RemediationRefused(CampaignOpsError):
    """A correction cannot start as asked (incident closed, brief not a correction of its run,
    a past run that never sent, a cell the run did not have): nothing was sent."""

    exit_code = 15


class LifecycleModelError(BriefError):
    """A lifecycle scoring model (lifecycle/*.yaml) failed its checks; every problem at once."""

    exit_code = 16
    noun = "lifecycle model"


class ScoringInProgress(CampaignOpsError):
    """Another lifecycle scoring holds the watermark: this one read and wrote nothing."""

    exit_code = 18


class LifecycleRefused(CampaignOpsError):
    """A lifecycle move cannot be made as asked (e.g. accepting a customer who is not an MQL)."""

    exit_code = 17
