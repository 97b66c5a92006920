"""A run's terminal without crash noise: an ordinary outcome ends with the CLI's one line.

When a campaign run started by the CLI ends in an ordinary outcome (a rejection, an expiry,
a QA block, a bad brief, a refused handoff: a CampaignOpsError), Prefect's engine reports
it on the console as a crash would: the task's "Finished in state Failed(...)", the flow's
"Encountered exception" with a traceback, then the flow's own "Finished in state Failed".
The CLI then prints the outcome in one line anyway, so on the console (never in the
Prefect API's logs, which keep everything) this filter drops:

* a flow-run record whose exception is a CampaignOpsError (decided by type), and every later
  record of that flow run (the engine's state report that follows it);
* the engine's ERROR records of task runs (a failing task's state report; the flow-level
  record says the same and decides, by type, whether a traceback is shown).

Anything else (a bug's traceback, warnings, progress) passes; at log level DEBUG nothing
is filtered.
"""

from __future__ import annotations

import logging

from campaignops.errors import CampaignOpsError

FLOW_RUNS, TASK_RUNS = "prefect.flow_runs", "prefect.task_runs"


class OrdinaryOutcomes(logging.Filter):
    """Drops the console records that would dress an ordinary outcome up as a crash."""

    def __init__(self) -> None:
        super().__init__("campaignops-ordinary-outcomes")
        self.ended: set[str] = set()  # flow runs that ended in an ordinary outcome

    def filter(self, record: logging.LogRecord) -> bool:
        """True to print the record."""
        if logging.getLogger("prefect").getEffectiveLevel() <= logging.DEBUG:
            return True
        run = str(getattr(record, "flow_run_id", "") or "")
        if record.name == FLOW_RUNS:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, CampaignOpsError):
                self.ended.add(run)
                return False
            return run not in self.ended
        if record.name == TASK_RUNS and record.levelno >= logging.ERROR and record.exc_info is None:
            return False
        return True


# Prefect's background senders (events, API logs) log their own drain at exit as a warning
# ("Still processing items: 1 items remaining..."), named after their class. A command
# ends with its own line; a send that really fails is reported by Prefect at ERROR.
PREFECT_SENDERS = ("EventsWorker", "APILogWorker")


def quiet_prefect_senders() -> None:
    """Keep the senders' drain progress off the terminal (errors still show)."""
    for name in PREFECT_SENDERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_ordinary_outcomes() -> OrdinaryOutcomes:
    """Install the filter on the console handlers in use (once); the filter."""
    for handler in logging.getLogger().handlers:
        found = next((f for f in handler.filters if isinstance(f, OrdinaryOutcomes)), None)
        if found is not None:
            return found
    quiet = OrdinaryOutcomes()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
    return quiet
