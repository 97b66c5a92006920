"""Approvers, what waits for approval, and the decisions: approve, reject, revoke."""

from __future__ import annotations

import os

import click

from campaignops.cli.common import console, settings_of, table, user_errors, warehouse_of
from campaignops.errors import CampaignOpsError


def approver_key(name: str) -> str:
    """The approver's key: CAMPAIGNOPS_APPROVER_KEY, else a hidden prompt."""
    key: str = os.environ.get("CAMPAIGNOPS_APPROVER_KEY") or click.prompt(
        f"approval key for {name}", hide_input=True)
    return key


def _decide(ctx: click.Context, run_id: str, name: str, stage: str | None, decision: str,
            reason: str, standing: bool = False) -> str:
    from campaignops.resume import submit_decision

    return submit_decision(settings_of(ctx), run_id, name, stage, decision, reason,
                           approver_key(name), via="cli", standing=standing)


@click.group()
def approvers() -> None:
    """Approvers and their personal approval keys."""


@approvers.command("add")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Issue a new key for an existing approver.")
@click.pass_context
@user_errors
def approvers_add(ctx: click.Context, name: str, rotate: bool) -> None:
    """Register an approver; prints their personal key once (stored only as a salted hash)."""
    from campaignops.approvers import add_approver

    key = add_approver(warehouse_of(ctx).engine, name, replace=rotate)
    click.echo(f"approval key for {name} (shown once; keep it private):\n{key}\n"
               "Give it with CAMPAIGNOPS_APPROVER_KEY or at the prompt of `campaignops approve`.")


@approvers.command("list")
@click.pass_context
@user_errors
def approvers_list(ctx: click.Context) -> None:
    """Registered approvers: name, kind (person or demo), when their key was issued."""
    from campaignops.approvers import list_approvers

    rows = list_approvers(warehouse_of(ctx).engine)
    if not rows:
        click.echo("no approvers yet: add one with `campaignops approvers add NAME`")
        return
    console().print(table(rows, left=("name", "kind", "key issued (UTC)")))
    click.echo(f"{len(rows)} approver(s); keys are stored as salted hashes and never shown again")


@click.command("approvals")
@click.pass_context
@user_errors
def approvals_cmd(ctx: click.Context) -> None:
    """What waits for approval, for whom, since when."""
    from campaignops import runs
    from campaignops.approval import close_abandoned, expire_overdue, expires_at
    from campaignops.local import apply_prefect_environment
    from campaignops.resume import prefect_states

    wh = warehouse_of(ctx)
    for run_id in expire_overdue(wh):
        click.echo(f"{run_id} expired: its approval wait ran past the brief's timeout")
    apply_prefect_environment(settings_of(ctx))
    waiting_ids = [r.run_id for r in runs.waiting_runs(wh.engine)]
    for run_id in close_abandoned(wh, prefect_states(waiting_ids) if waiting_ids else {}):
        click.echo(f"{run_id} failed: its approval wait can no longer proceed (see audit show)")
    waiting = runs.waiting_runs(wh.engine)
    if not waiting:
        click.echo("nothing waits for approval")
        return
    rows = []
    for r in waiting:
        stage = next(s for s in r.brief.approvals if s.stage == r.waiting_stage)
        since = r.waiting_since or r.updated_at
        rows.append({"run": r.run_id, "campaign": r.campaign_id, "stage": stage.stage,
                     "approvers": ", ".join(stage.approvers), "since (UTC)": f"{since:%Y-%m-%d %H:%M}",
                     "expires (UTC)": f"{expires_at(since, r.brief):%Y-%m-%d %H:%M}",
                     "recipients": f"{r.recipients or 0:,}"})
    console().print(table(rows, left=("run", "campaign", "stage", "approvers", "since (UTC)",
                                      "expires (UTC)")))


@click.command("approve")
@click.argument("run_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--stage", default=None, help="The stage you approve (default: the one waiting).")
@click.option("--standing", is_flag=True,
              help="Also grant a standing approval: later runs of this recurring campaign go on "
                   "without a person while QA is clean and the size in tolerance.")
@click.pass_context
@user_errors
def approve_cmd(ctx: click.Context, run_id: str, name: str, stage: str | None, standing: bool) -> None:
    """Approve the waiting stage of a run (key from CAMPAIGNOPS_APPROVER_KEY or a prompt)."""
    action = _decide(ctx, run_id, name, stage, "approve", "", standing)
    click.echo(f"run {run_id}: {action} by {name}" + (" (standing approval granted)" if standing else ""))


@click.command("reject")
@click.argument("run_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--reason", required=True, help="Why: recorded in the audit.")
@click.option("--stage", default=None, help="The stage you reject (default: the one waiting).")
@click.pass_context
@user_errors
def reject_cmd(ctx: click.Context, run_id: str, name: str, reason: str, stage: str | None) -> None:
    """Reject the waiting stage of a run; the run ends and nothing is sent."""
    action = _decide(ctx, run_id, name, stage, "reject", reason)
    click.echo(f"run {run_id}: {action} by {name}")


@click.command("revoke")
@click.argument("campaign_id")
@click.option("--as", "name", required=True, help="Your name as the brief lists it.")
@click.option("--stage", default=None, help="Revoke one stage only (default: all).")
@click.pass_context
@user_errors
def revoke_cmd(ctx: click.Context, campaign_id: str, name: str, stage: str | None) -> None:
    """Revoke a recurring campaign's standing approval: later runs wait for a person again."""
    from campaignops import audit
    from campaignops.approval import revoke_standing
    from campaignops.approvers import verify_key

    engine = warehouse_of(ctx).engine
    if not verify_key(engine, name, approver_key(name)):
        audit.append(engine, run_id=None, step="standing_approval", action="revoke_refused", actor=name,
                     details={"campaign_id": campaign_id, "why": "wrong or unregistered key"})
        raise CampaignOpsError(f"the approval key for {name} is wrong or not registered")
    n = revoke_standing(engine, campaign_id, stage, name)
    if n == 0:
        raise CampaignOpsError(f"campaign {campaign_id} has no active standing approval"
                               + (f" for stage {stage}" if stage else ""))
    audit.append(engine, run_id=None, step="standing_approval", action="revoked", actor=name,
                 details={"campaign_id": campaign_id, "stage": stage, "grants": n})
    click.echo(f"revoked {n} standing approval(s) of {campaign_id}")
