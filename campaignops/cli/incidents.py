"""`campaignops incident` (open, show, list, close) and `campaignops remediate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from campaignops.cli.common import (
    console,
    prefect_env,
    settings_of,
    table,
    user_errors,
    warehouse_of,
)
from campaignops.incidents import KINDS, ImpactReport
from campaignops.settings import Settings


def publish(settings: Settings, report: ImpactReport, opened: bool = False) -> None:
    """Run the incident-report flow (the event when just opened, the impact artifact); a warning
    line if Prefect cannot be reached: the incident is recorded and audited either way."""
    prefect_env(settings)
    from flows.incident import incident_report

    try:
        state = incident_report(incident_id=report.incident.incident_id, opened=opened,
                                return_state=True)
        outcome = None if state.is_completed() else str(state.name)
    except Exception as exc:  # Prefect unreachable: what was recorded stands
        outcome = type(exc).__name__
    if outcome is not None:
        click.echo(f"warning: the incident report was not published ({outcome}); the incident is "
                   "recorded: `campaignops incident show` has the report", err=True)


def print_report(report: ImpactReport) -> None:
    """The impact report in the terminal (counts, names of approvers, digests; no address)."""
    inc = report.incident
    click.echo(f"incident {inc.incident_id} ({inc.status}): {inc.kind} in campaign {inc.campaign_id}, "
               f"run {inc.run_id}")
    click.echo(f"  reported by {inc.reported_by} at {inc.opened_at:%Y-%m-%d %H:%M} UTC; routed to "
               f"{', '.join(report.route)}; scope: cell {inc.cell or 'all'}, offer {inc.offer_code or 'all'}")
    click.echo(f"  note: {inc.note}")
    if inc.closed_at is not None:
        click.echo(f"  closed by {inc.closed_by} at {inc.closed_at:%Y-%m-%d %H:%M} UTC: {inc.close_note}")
    click.echo(f"affected: {report.affected_customers:,} customers accepted by the ESP")
    rows: list[dict[str, Any]] = [
        {"outcome": r.outcome, "cell": r.cell or "-", "offer": r.offer_code or "-",
         "customers": f"{r.customers:,}", "seeds": f"{r.seeds:,}"} for r in report.affected]
    if rows:
        console().print(table(rows, left=("outcome", "cell", "offer")))
    if report.approvals:
        console().print(table([{"stage": a.stage, "approver": a.approver, "decision": a.decision,
                                "packet digest": a.packet_digest, "at (UTC)": a.at}
                               for a in report.approvals], left=("stage", "approver", "decision",
                                                                 "packet digest", "at (UTC)"),
                              title="approvals (what each approver was shown: the packet digest)"))
    qa = "not recorded" if report.qa_passed is None else ("passed" if report.qa_passed else "blocked")
    click.echo(f"QA {qa}: {len(report.qa_checks)} checks passed: {', '.join(report.qa_checks) or 'none'}"
               + (f"; warnings: {', '.join(report.qa_warnings)}" if report.qa_warnings else ""))
    console().print(table([{"at (UTC)": a["at"], "action": a["action"], "by": a["actor"], "run": a["run"]}
                           for a in report.actions], left=("at (UTC)", "action", "by", "run"),
                          title="since"))
    if report.corrections:
        console().print(table([{"correction run": c.run_id, "status": c.status,
                                "delivered": f"{c.delivered:,}"} for c in report.corrections],
                              left=("correction run", "status"), title="corrections"))


@click.group("incident")
def incident_group() -> None:
    """Incidents: a send that went wrong, its exact impact, and what was done."""


@incident_group.command("open")
@click.argument("run_id")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What went wrong.")
@click.option("--reported-by", "reported_by", required=True, help="Who reports it (name or team).")
@click.option("--note", required=True, help="What happened, without personal data (customer ids, not addresses).")
@click.option("--cell", default=None, help="The run's cell that went wrong (default: all).")
@click.option("--offer", "offer_code", default=None, help="The offer that went wrong (default: all).")
@click.pass_context
@user_errors
def incident_open(ctx: click.Context, run_id: str, kind: str, reported_by: str, note: str,
                  cell: str | None, offer_code: str | None) -> None:
    """Open an incident against a run that sent; prints its id, the event routes it."""
    from campaignops.incidents import impact_report, open_incident

    settings = settings_of(ctx)
    engine = warehouse_of(ctx).engine
    inc = open_incident(engine, settings, run_id, kind, reported_by, note, cell, offer_code)
    report = impact_report(engine, settings, inc.incident_id)
    click.echo(inc.incident_id)
    click.echo(f"affected: {report.affected_customers:,} customers; routed to {', '.join(report.route)}; "
               f"`campaignops incident show {inc.incident_id}` is the impact report", err=True)
    publish(settings, report, opened=True)


@incident_group.command("show")
@click.argument("incident_id")
@click.pass_context
@user_errors
def incident_show(ctx: click.Context, incident_id: str) -> None:
    """The impact report: affected counts, approvals and packet digest, QA, actions since."""
    from campaignops.incidents import impact_report

    print_report(impact_report(warehouse_of(ctx).engine, settings_of(ctx), incident_id))


@incident_group.command("list")
@click.option("--status", type=click.Choice(["open", "closed"]), default=None)
@click.pass_context
@user_errors
def incident_list(ctx: click.Context, status: str | None) -> None:
    """Incidents, newest first."""
    from campaignops.incidents import list_incidents

    found = list_incidents(warehouse_of(ctx).engine, status)
    if not found:
        click.echo("no incidents")
        return
    console().print(table([{"incident": i.incident_id, "status": i.status, "kind": i.kind,
                            "campaign": i.campaign_id, "run": i.run_id, "cell": i.cell or "-",
                            "offer": i.offer_code or "-",
                            "opened (UTC)": f"{i.opened_at:%Y-%m-%d %H:%M}"} for i in found],
                          left=("incident", "status", "kind", "campaign", "run", "cell", "offer",
                                "opened (UTC)")))


@incident_group.command("close")
@click.argument("incident_id")
@click.option("--as", "by", required=True, help="Who closes it.")
@click.option("--note", required=True, help="How it was resolved, without personal data.")
@click.pass_context
@user_errors
def incident_close(ctx: click.Context, incident_id: str, by: str, note: str) -> None:
    """Close an incident (audited)."""
    from campaignops.incidents import close_incident, impact_report

    settings = settings_of(ctx)
    engine = warehouse_of(ctx).engine
    close_incident(engine, incident_id, by, note)
    click.echo(f"incident {incident_id} closed")
    publish(settings, impact_report(engine, settings, incident_id))


@click.command("remediate")
@click.argument("incident_id")
@click.option("--brief", "brief_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The correction brief (audience.from_run or audience.missed_by of the incident's run).")
@click.pass_context
@user_errors
def remediate_cmd(ctx: click.Context, incident_id: str, brief_path: Path) -> None:
    """Send a correction of the incident: the campaign run, through QA and the brief's
    approvals, linked to the incident; nobody is corrected twice for one incident."""
    from campaignops.cli.run import print_handoff, print_waterfall, run_flow
    from campaignops.incidents import impact_report, plan_remediation

    settings = settings_of(ctx)
    engine = warehouse_of(ctx).engine
    sends = plan_remediation(warehouse_of(ctx), incident_id, brief_path)  # refused before any run
    click.echo(f"correcting incident {incident_id}: {sends:,} customers to reach; the run waits "
               "for the brief's approvals", err=True)
    out = run_flow(settings, brief_path, "full", incident_id)
    click.echo(f"correction run {out.run_id} of incident {incident_id} sent:")
    print_waterfall(out.waterfall)
    if out.handoff is not None:
        print_handoff(out.handoff)
    publish(settings, impact_report(engine, settings, incident_id))
