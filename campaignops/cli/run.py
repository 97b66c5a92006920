"""`campaignops run` and `campaignops qa`: a campaign run on this machine, through Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from campaignops.cli.common import console, export_setting, settings_of, table, user_errors
from campaignops.cli.quiet import quiet_ordinary_outcomes
from campaignops.errors import CampaignOpsError
from campaignops.settings import Settings, load_settings

if TYPE_CHECKING:  # pragma: no cover
    from campaignops.handoff import HandoffOutcome
    from campaignops.segmentation import Waterfall
    from flows.campaign import RunOutcome


def run_flow(settings: Settings, brief_path: Path, mode: str,
             incident_id: str | None = None) -> RunOutcome:
    """Run the campaign flow in this process (a correction of the incident when given); its
    outcome, or the error that ended it."""
    from campaignops.local import apply_prefect_environment

    apply_prefect_environment(settings)
    from flows.campaign import RunOutcome, campaign_run

    quiet_ordinary_outcomes()
    state = campaign_run(brief_path=str(brief_path.resolve()), mode=mode, incident_id=incident_id,
                         return_state=True)
    return outcome_of(state, RunOutcome)


T = TypeVar("T")


def register_outcome(run_id: str) -> CampaignOpsError | None:
    """The ordinary outcome the run register holds for a run Prefect ended with its own error
    (a pause that timed out on the server is Prefect's "never resumed": the run expired)."""
    from campaignops import audit, runs
    from campaignops.errors import ApprovalExpired
    from campaignops.resources import open_resources

    if not run_id:
        return None
    engine = open_resources().warehouse.engine
    try:
        run = runs.get_run(engine, run_id)
    except CampaignOpsError:
        return None
    if run.status != runs.EXPIRED:
        return None
    rec = next((r for r in reversed(audit.trail(engine, run_id))
                if r.step.startswith("approval:") and r.action == "expired"), None)
    stage = f" for stage {rec.step.split(':', 1)[1]}" if rec is not None else ""
    return ApprovalExpired(f"approval wait{stage} expired; the run did not send")


def outcome_of(state: Any, kind: type[T]) -> T:
    """A finished flow state's result of type ``kind``, or the error that ended it."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        if isinstance(result, CampaignOpsError):
            raise result
        ended = register_outcome(str(getattr(state.state_details, "flow_run_id", "") or ""))
        if ended is not None:
            raise ended from None
        lines = str(result).splitlines()
        raise CampaignOpsError(f"run failed: {type(result).__name__}: {lines[0] if lines else ''}")
    if not state.is_completed() or not isinstance(result, kind):
        raise CampaignOpsError(f"run ended {state.name}: {state.message}")
    return result


def print_waterfall(wf: Waterfall) -> None:
    """The waterfall as a terminal table."""
    rows = [{"step": "matched the brief's rules", "count": f"{wf.matched:,}"}]
    rows += [{"step": f"- {s['label']}", "count": f"{s['removed']:,}"} for s in wf.steps if s["removed"]]
    rows += [{"step": "eligible", "count": f"{wf.eligible:,}"},
             {"step": "- control group (held out)", "count": f"{wf.control:,}"}]
    rows += [{"step": f"cell {name}", "count": f"{n:,}"} for name, n in wf.cells.items()]
    rows += [{"step": "+ seed recipients", "count": f"{wf.seeds:,}"},
             {"step": "recipients", "count": f"{wf.recipients:,}"}]
    console().print(table(rows, left=("step",)))


def print_handoff(out: HandoffOutcome) -> None:
    """One line: what the handoff delivered and whether it reconciled."""
    from campaignops.handoff.file import FileHandoff

    reconciled = "yes" if out.reconciled else "NO"
    if isinstance(out, FileHandoff):
        click.echo(f"handoff: file {out.csv_path} ({out.rows:,} rows, sha256 {out.sha256}), "
                   f"approved {out.approved:,}, reconciled: {reconciled}"
                   + ("" if out.released else " (already released, unchanged)"))
        return
    rec = out.reconciliation
    billed = "" if rec.segments is None else f", SMS segments billed {rec.segments:,}"
    click.echo(f"handoff: approved {rec.approved:,}, accepted {rec.accepted:,}, "
               f"rejected {rec.rejected:,}{billed}, reconciled: {reconciled}")


def warn_size(settings: Settings, run_id: str, wf: Waterfall) -> None:
    """A warning line (stderr; the exit code stays 0) when a counted run's sends fall
    outside the brief's expected_audience."""
    from campaignops.resources import open_resources
    from campaignops.runs import get_run
    from campaignops.segmentation import size_warning

    brief = get_run(open_resources(settings).warehouse.engine, run_id).brief
    warning = size_warning(brief, sum(wf.cells.values()))
    if warning:
        click.echo(warning, err=True)


@click.command("run")
@click.argument("brief_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Count only: the waterfall, no QA, approval or handoff.")
@click.option("--handoff", "handoff_mode", type=click.Choice(["http", "file"]), default=None,
              help="http: batches to the ESP; file: a checked CSV + manifest in the drop folder "
                   "[env CAMPAIGNOPS_HANDOFF_MODE; default http].")
@click.pass_context
@user_errors
def run_cmd(ctx: click.Context, brief_path: Path, dry_run: bool, handoff_mode: str | None) -> None:
    """One ad hoc campaign run (waits for the brief's approvals)."""
    settings = settings_of(ctx)
    if handoff_mode is not None:  # the flow's tasks read it from the environment
        export_setting("HANDOFF_MODE", handoff_mode)
        settings = load_settings()
    out = run_flow(settings, brief_path, "count" if dry_run else "full")
    click.echo(f"run {out.run_id} {'counted' if dry_run else 'sent'}:")
    print_waterfall(out.waterfall)
    if dry_run:
        warn_size(settings, out.run_id, out.waterfall)
    if out.handoff is not None:
        print_handoff(out.handoff)


@click.command("qa")
@click.argument("brief_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@user_errors
def qa_cmd(ctx: click.Context, brief_path: Path) -> None:
    """Segmentation and QA only: no approval, no handoff."""
    out = run_flow(settings_of(ctx), brief_path, "qa")
    assert out.qa is not None
    click.echo(f"run {out.run_id}: QA {'passed' if out.qa.passed else 'blocked'} "
               f"({out.qa.checks} checks, warnings: {', '.join(out.qa.warnings) or 'none'})")
    print_waterfall(out.waterfall)


@click.command("resume")
@click.argument("run_id")
@click.pass_context
@user_errors
def resume_cmd(ctx: click.Context, run_id: str) -> None:
    """Go on with a run that failed after its approvals (token fixed, ESP back), without
    asking again while what was approved is unchanged."""
    from campaignops.local import apply_prefect_environment

    settings = settings_of(ctx)
    apply_prefect_environment(settings)
    from flows.campaign import ResumeOutcome, campaign_resume

    quiet_ordinary_outcomes()
    out = outcome_of(campaign_resume(run_id=run_id, return_state=True), ResumeOutcome)
    click.echo(f"run {out.run_id} resumed with its approvals (digest {out.packet_digest[:12]} "
               f"unchanged) and sent:")
    print_handoff(out.handoff)
