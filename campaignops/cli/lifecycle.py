"""`campaignops lifecycle` (score, report, accept, sla, schema): the lead lifecycle (docs/lifecycle.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from campaignops.cli.common import (
    console,
    prefect_env,
    settings_of,
    table,
    user_errors,
    warehouse_of,
)

MODEL_OPTION = click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                            help="The scoring model file [default: lifecycle/default.yaml].")


STAGE_BEFORE = {"sql": "an MQL", "opportunity": "an SQL", "customer": "an opportunity"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


@click.group("lifecycle")
def lifecycle_group() -> None:
    """The lead lifecycle: scoring in the warehouse, the funnel, sales acceptance and its SLA."""


@lifecycle_group.command("score")
@MODEL_OPTION
@click.option("--local", is_flag=True, help="Score without Prefect (no events, no funnel artifact).")
@click.option("--full", is_flag=True, help="Rescore everyone, not only those whose inputs changed since the "
              "watermark (e.g. after events were loaded late).")
@click.pass_context
@user_errors
def lifecycle_score(ctx: click.Context, model_path: Path | None, local: bool, full: bool) -> None:
    """Score the customers whose inputs changed since the last scoring (the lifecycle-scoring flow, or --local)."""
    from campaignops.lifecycle.model import load_model
    from campaignops.lifecycle.scoring import score_customers

    model = load_model(model_path)  # checked before anything runs
    engine = warehouse_of(ctx).engine
    if local:
        result = score_customers(engine, model, full=full)
        scoring_id, entered, backward = result.scoring_id, result.entered, result.backward
    else:
        prefect_env(settings_of(ctx))
        from flows.lifecycle import lifecycle_scoring

        out = lifecycle_scoring(model_path=None if model_path is None else str(model_path), full=full)
        scoring_id, entered, backward = out["scoring_id"], out["entered"], out["backward"]
    click.echo(f"scoring {scoring_id} with model {model.version}: "
               + (", ".join(f"{n:,} entered {s}" for s, n in entered.items()) or "no stage changed")
               + (f" ({backward:,} recycled backwards)" if backward else ""))


@lifecycle_group.command("report")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3650),
              help="The period for flows and conversion.")
@click.pass_context
@user_errors
def lifecycle_report_cmd(ctx: click.Context, days: int) -> None:
    """The funnel now, flows between stages over the period, conversion, median days in stage."""
    from campaignops.lifecycle.report import lifecycle_report

    report = lifecycle_report(warehouse_of(ctx).engine, _now() - dt.timedelta(days=days))
    rows = [{"stage": s.stage, "customers": f"{s.customers:,}", f"entered ({days} d)": f"{s.entered:,}",
             "moved on": f"{s.converted:,}",
             "conversion": "-" if s.conversion is None else f"{s.conversion:.1%}",
             "median days in stage": "-" if s.median_days is None else f"{s.median_days:.1f}"}
            for s in report.stages]
    console().print(table(rows, left=("stage",), title=f"lifecycle funnel: {report.total:,} customers scored"))
    if report.flows:
        console().print(table([{"from": f, "to": t, "customers": f"{n:,}"} for f, t, n in report.flows],
                              left=("from", "to"), title=f"flows in the last {days} days"))


@lifecycle_group.command("accept")
@click.argument("customer_id", type=int, required=False)
@click.option("--as", "actor", required=True, help="Who in sales accepts (name or team).")
@click.option("--to", "to", default="sql", show_default=True, help="The manual stage to accept into.")
@click.option("--file", "batch", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Accept every customer id in this file (one a line; # comments) at once, audited.")
@click.pass_context
@user_errors
def lifecycle_accept(ctx: click.Context, customer_id: int | None, actor: str, to: str, batch: Path | None) -> None:
    """Record sales acceptance: an MQL becomes an SQL (or an SQL an opportunity with --to); one or a file."""
    from campaignops.errors import CampaignOpsError
    from campaignops.lifecycle.report import accept, accept_many

    if (customer_id is None) == (batch is None):
        raise CampaignOpsError("accept: give one CUSTOMER_ID or --file FILE (not both)")
    engine = warehouse_of(ctx).engine
    if batch is None:
        assert customer_id is not None
        before, after = accept(engine, customer_id, actor, to)
        click.echo(f"customer {customer_id}: {before} -> {after}, accepted by {actor.strip()}")
        return
    import hashlib

    from campaignops import audit

    raw = batch.read_bytes()
    ids: list[int] = []
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit():
            raise CampaignOpsError(f"--file {batch.name} line {n}: not a customer id; write one id a line")
        ids.append(int(text))
    done = accept_many(engine, ids, actor, to)
    audit.append(engine, run_id=None, step="lifecycle", action="accepted", actor=actor.strip(),
                 details={"to": to, "accepted": done.accepted, "not_scored": done.not_scored,
                          "wrong_stage": done.wrong_stage, "repeated": done.repeated,
                          "file_sha256": hashlib.sha256(raw).hexdigest()})
    click.echo(f"{done.accepted:,} accepted into {to} by {actor.strip()}; skipped: {done.wrong_stage:,} not "
               f"{STAGE_BEFORE[to] if to in STAGE_BEFORE else 'in the stage before'}, {done.not_scored:,} never "
               f"scored, {done.repeated:,} repeated lines")


@lifecycle_group.command("sla")
@MODEL_OPTION
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 3650),
              help="The period of acceptances to judge.")
@click.option("--no-event", is_flag=True, help="Do not emit the breach event.")
@click.pass_context
@user_errors
def lifecycle_sla(ctx: click.Context, model_path: Path | None, days: int, no_event: bool) -> None:
    """MQLs accepted within the model's SLA; MQLs waiting past it (an event when there are any)."""
    from campaignops.lifecycle.model import load_model
    from campaignops.lifecycle.report import sla_report

    model = load_model(model_path)
    r = sla_report(warehouse_of(ctx).engine, model, _now() - dt.timedelta(days=days))
    click.echo(f"SLA {r.hours:g} h: {r.accepted:,} MQLs accepted in the last {days} days, {r.within:,} within "
               f"the SLA, {r.late:,} late; {r.waiting:,} waiting, {r.breached:,} past the SLA")
    if r.breached and not no_event:
        prefect_env(settings_of(ctx))
        from tasks.lifecycle import emit_sla_breach

        emit_sla_breach(r.breached, r.hours, r.waiting)


@lifecycle_group.command("schema")
def lifecycle_schema() -> None:
    """Print the scoring model's JSON Schema (published as docs/lifecycle.schema.json)."""
    from campaignops.lifecycle.model import schema_text

    click.echo(schema_text(), nl=False)
