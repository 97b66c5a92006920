"""Process KPIs from the run register and the audit trail (docs/kpis.md).

Per run: how long each stage took, how long approvers kept the run waiting,
how often the brief bounced at intake before it was accepted (back-and-forths),
the defects QA (and the handoff's digest guard) caught, and whether the
handoff was on time. Per campaign: the same, counted and summarised.

Counts of runs by outcome are aggregate queries; everything that needs the
order of events streams ``co_audit`` by ``seq``. Audience rows are never read.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops import runs as run_status
from campaignops.schema import audit_log, corrections, incidents, runs

# A run without a send_at goes out "as soon as the last approval is given": its
# handoff is on time when reconciled within this many minutes of that approval.
ASAP_GRACE_MINUTES = 60

# A file drop is handed off when it is released (file_written) or was released by an
# earlier attempt (file_unchanged): both hold exactly the approved rows, so they count as
# a reconciled handoff.
HANDOFF_AS = {"file_written": "reconciled", "file_unchanged": "reconciled"}

# The stages of a run in pipeline order (approval stages sit between QA and handoff).
STEP_DONE = {
    "segmentation": frozenset({"materialised"}),
    "qa": frozenset({"passed", "blocked"}),
    "handoff": frozenset({"reconciled", "mismatch", "refused", "file_written", "file_unchanged",
                          "file_qa_failed"}),
    "contact_history": frozenset({"written"}),
}
DECISIONS = frozenset({"approved", "rejected", "expired"})
FINISHED = frozenset({
    run_status.SENT, run_status.QA_BLOCKED, run_status.REJECTED, run_status.EXPIRED,
    run_status.FAILED, run_status.COUNTED,
})


@dataclass(frozen=True)
class RunKpi:
    """The KPIs of one run. Durations are seconds; times are naive UTC."""

    run_id: str
    campaign_id: str
    status: str
    dry_run: bool
    created_at: dt.datetime
    brief_source: str | None
    recipients: int | None
    accepted_at: dt.datetime | None
    # Step -> seconds from the end of the previous step to this step's first completion
    # record, in pipeline order: segmentation, qa, approval:<stage>..., handoff, contact_history.
    stage_seconds: dict[str, float]
    # Approval stage -> seconds from "waiting" to the decision (0 for a standing approval).
    approval_waits: dict[str, float]
    # Approval stage -> approved | standing | rejected | expired.
    approval_outcomes: dict[str, str]
    open_wait: str | None  # the stage the run waits for now, if any
    approval_refusals: int  # decisions refused (wrong key, not an approver, ...)
    cycle_seconds: float | None  # intake accepted -> last record, finished runs only
    intake_rejections: int  # back-and-forths: rejected intakes of this brief file before acceptance
    intake_rework_seconds: float | None  # first of those rejections -> acceptance
    qa_blocked: bool
    qa_failed_critical: int
    qa_warnings: int
    # reconciled (a released file drop too) | mismatch | refused | file_qa_failed
    # (reconciled wins over earlier attempts)
    handoff: str | None
    handoff_at: dt.datetime | None
    deadline: dt.datetime | None  # send_at, or the last approval + the as-soon-as grace
    on_time: bool | None  # None: the run was not (yet) due to hand off

    @property
    def handoff_refused(self) -> bool:
        """The handoff's digest guard refused to send what was not approved."""
        return self.handoff == "refused"

    @property
    def defects_caught(self) -> int:
        """Failed critical QA checks + QA warnings + a refused handoff."""
        return self.qa_failed_critical + self.qa_warnings + int(self.handoff_refused)


@dataclass(frozen=True)
class CampaignKpi:
    """The KPIs of one campaign over its runs in the window."""

    campaign_id: str
    runs: int
    sent: int  # runs that reached status sent
    recipients_sent: int  # recipients of those runs (seeds included, as handed off)
    blocked_by_qa: int
    rejected: int
    expired: int
    failed: int
    dry_runs: int
    in_progress: int
    intake_rejections: int  # back-and-forths summed over the campaign's runs
    defects_caught: int
    median_cycle_seconds: float | None  # over sent runs: intake accepted -> contact history
    median_approval_wait_seconds: float | None  # over every decided stage wait, all stages
    median_stage_seconds: dict[str, float]
    on_time: int
    due: int  # runs whose on-time flag is known (True or False)
    # Defects that escaped QA: incidents opened against the campaign's runs in the window.
    incidents: int = 0
    remediated: int = 0  # of those, the ones a correction run reconciled
    median_remediate_seconds: float | None = None  # incident opened -> its correction reconciled

    @property
    def on_time_share(self) -> float | None:
        """on_time / due, or None when no run was due."""
        return self.on_time / self.due if self.due else None


@dataclass
class _Acc:
    """What the audit stream has told us about one run so far."""

    accepted_at: dt.datetime | None = None
    last_end: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wait_start: dict[str, dt.datetime] = field(default_factory=dict)
    waits: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    last_approval_at: dt.datetime | None = None
    refusals: int = 0
    qa_blocked: bool = False
    qa_failed_critical: int = 0
    qa_warnings: int = 0
    handoff: str | None = None
    handoff_at: dt.datetime | None = None

    def complete(self, step: str, at: dt.datetime) -> None:
        if step not in self.stage_seconds and self.last_end is not None:
            self.stage_seconds[step] = _seconds(at - self.last_end)
            self.last_end = at
        self.finished_at = at if self.finished_at is None else max(self.finished_at, at)


def _seconds(delta: dt.timedelta) -> float:
    return round(delta.total_seconds(), 3)


def _ts(iso: str) -> dt.datetime:
    """An audit created_at (ISO-8601 UTC) as naive UTC."""
    return run_status.utc_naive(dt.datetime.fromisoformat(iso))


def _run_filter(since: dt.datetime | None, campaign_id: str | None) -> list[Any]:
    where: list[Any] = []
    if since is not None:
        where.append(runs.c.created_at >= run_status.utc_naive(since))
    if campaign_id is not None:
        where.append(runs.c.campaign_id == campaign_id)
    return where


def _intake_rounds(conn: Connection) -> dict[str, tuple[int, dt.datetime | None]]:
    """Per accepted run: (rejected intakes of its brief file since the file's previous
    acceptance, time of the first of them). Streams the intake records by seq."""
    q = (
        sa.select(audit_log.c.run_id, audit_log.c.action, audit_log.c.details,
                  audit_log.c.created_at, runs.c.brief_source)
        .select_from(audit_log.outerjoin(runs, runs.c.run_id == audit_log.c.run_id))
        .where(audit_log.c.step == "intake", audit_log.c.action.in_(("accepted", "rejected")))
        .order_by(audit_log.c.seq)
    )
    pending: dict[str, list[dt.datetime]] = defaultdict(list)
    rounds: dict[str, tuple[int, dt.datetime | None]] = {}
    for r in conn.execution_options(yield_per=1000).execute(q):
        if r.action == "rejected":
            source = json.loads(r.details).get("source")
            if source:
                pending[str(source)].append(_ts(r.created_at))
        elif r.run_id is not None and r.run_id not in rounds and r.brief_source:
            bounced = pending.pop(r.brief_source, [])
            rounds[r.run_id] = (len(bounced), bounced[0] if bounced else None)
    return rounds


def _stream_runs(conn: Connection, where: list[Any]) -> dict[str, _Acc]:
    """Fold every audit record of the selected runs, in seq order."""
    selected = sa.select(runs.c.run_id).where(*where)
    q = (
        sa.select(audit_log.c.run_id, audit_log.c.step, audit_log.c.action,
                  audit_log.c.details, audit_log.c.created_at)
        .where(audit_log.c.run_id.in_(selected))
        .order_by(audit_log.c.seq)
    )
    accs: dict[str, _Acc] = defaultdict(_Acc)
    for r in conn.execution_options(yield_per=1000).execute(q):
        acc = accs[r.run_id]
        at = _ts(r.created_at)
        step, action = r.step, r.action
        if step == "intake":
            if action == "accepted" and acc.accepted_at is None:
                acc.accepted_at = acc.last_end = at
        elif step.startswith("approval:"):
            stage = step.split(":", 1)[1]
            if action == "waiting":
                acc.wait_start.setdefault(stage, at)
            elif action == "refused":
                acc.refusals += 1
            elif action in DECISIONS and stage not in acc.outcomes:
                standing = action == "approved" and json.loads(r.details).get("via") == "standing"
                acc.outcomes[stage] = "standing" if standing else action
                start = acc.wait_start.get(stage)
                if standing and start is None:
                    acc.waits[stage] = 0.0
                elif start is not None:
                    acc.waits[stage] = _seconds(at - start)
                if action == "approved":
                    acc.last_approval_at = at
                acc.complete(step, at)
        elif step in STEP_DONE and action in STEP_DONE[step]:
            if step == "qa" and "qa" not in acc.stage_seconds:
                details = json.loads(r.details)
                acc.qa_blocked = action == "blocked"
                acc.qa_failed_critical = len(details.get("failed_critical") or [])
                acc.qa_warnings = len(details.get("warnings") or [])
            if step == "handoff" and acc.handoff != "reconciled":
                acc.handoff, acc.handoff_at = HANDOFF_AS.get(action, action), at
            acc.complete(step, at)
        elif step == "run" and action in ("failed", "counted"):
            acc.finished_at = at if acc.finished_at is None else max(acc.finished_at, at)
    return accs


def _brief_facts(brief_json: str) -> tuple[dt.datetime | None, list[str]]:
    """(send_at as naive UTC, approval stages) from a stored brief."""
    try:
        brief = json.loads(brief_json)
    except ValueError:
        return None, []
    send_at = brief.get("send_at")
    stages = [str(s.get("stage")) for s in brief.get("approvals") or [] if isinstance(s, dict)]
    return (_ts(send_at) if send_at else None), stages


def _on_time(acc: _Acc, status: str, dry_run: bool, send_at: dt.datetime | None,
             stages: list[str], now: dt.datetime,
             grace: dt.timedelta) -> tuple[dt.datetime | None, bool | None]:
    approved = bool(stages) and all(acc.outcomes.get(s) in ("approved", "standing") for s in stages)
    deadline = send_at
    if deadline is None and acc.last_approval_at is not None and approved:
        deadline = acc.last_approval_at + grace
    due = not dry_run and (approved or acc.handoff is not None)
    if not due:
        return deadline, None
    if acc.handoff == "reconciled" and acc.handoff_at is not None:
        return deadline, deadline is None or acc.handoff_at <= deadline
    if acc.handoff is not None or status in FINISHED:
        return deadline, False  # handed off wrongly, refused, or failed before sending
    if deadline is not None and now > deadline:
        return deadline, False  # still not handed off and the deadline has passed
    return deadline, None  # on its way, not late yet


def run_kpis(engine: Engine, since: dt.datetime | None = None, campaign_id: str | None = None,
             *, now: dt.datetime | None = None,
             asap_grace_minutes: float = ASAP_GRACE_MINUTES) -> list[RunKpi]:
    """The KPIs of every run created since `since` (naive UTC or aware), oldest first."""
    now = run_status.utc_naive(now) if now is not None else run_status.utcnow()
    grace = dt.timedelta(minutes=asap_grace_minutes)
    where = _run_filter(since, campaign_id)
    with engine.connect() as conn:
        rounds = _intake_rounds(conn)
        accs = _stream_runs(conn, where)
        rows = conn.execute(
            sa.select(runs.c.run_id, runs.c.campaign_id, runs.c.status, runs.c.dry_run,
                      runs.c.created_at, runs.c.brief_source, runs.c.recipients,
                      runs.c.waiting_stage, runs.c.brief_json)
            .where(*where)
            .order_by(runs.c.created_at, runs.c.run_id)
        ).all()
    out: list[RunKpi] = []
    for r in rows:
        acc = accs.get(r.run_id) or _Acc()
        send_at, stages = _brief_facts(r.brief_json)
        deadline, on_time = _on_time(acc, r.status, bool(r.dry_run), send_at, stages, now, grace)
        bounced, first_bounce = rounds.get(r.run_id, (0, None))
        cycle = None
        if r.status in FINISHED and acc.accepted_at is not None and acc.finished_at is not None:
            cycle = _seconds(acc.finished_at - acc.accepted_at)
        open_wait = None
        if r.status == run_status.AWAITING:
            open_wait = r.waiting_stage or next(
                (s for s in acc.wait_start if s not in acc.outcomes), None)
        out.append(RunKpi(
            run_id=r.run_id, campaign_id=r.campaign_id, status=r.status, dry_run=bool(r.dry_run),
            created_at=r.created_at, brief_source=r.brief_source,
            recipients=None if r.recipients is None else int(r.recipients),
            accepted_at=acc.accepted_at, stage_seconds=dict(acc.stage_seconds),
            approval_waits=dict(acc.waits), approval_outcomes=dict(acc.outcomes),
            open_wait=open_wait, approval_refusals=acc.refusals, cycle_seconds=cycle,
            intake_rejections=bounced,
            intake_rework_seconds=(_seconds(acc.accepted_at - first_bounce)
                                   if first_bounce is not None and acc.accepted_at is not None
                                   else None),
            qa_blocked=acc.qa_blocked, qa_failed_critical=acc.qa_failed_critical,
            qa_warnings=acc.qa_warnings, handoff=acc.handoff, handoff_at=acc.handoff_at,
            deadline=deadline, on_time=on_time,
        ))
    return out


RECONCILED = ("reconciled", "file_written", "file_unchanged")


@dataclass(frozen=True)
class IncidentKpi:
    """A campaign's incidents (defects that escaped QA) and how fast they were remediated."""

    incidents: int
    remediated: int
    median_remediate_seconds: float | None


def incident_kpis(engine: Engine, since: dt.datetime | None = None,
                  campaign_id: str | None = None) -> dict[str, IncidentKpi]:
    """Per campaign: incidents opened since `since`, and the time from each incident's opening
    to the first reconciled handoff of a correction run of it (one row per incident)."""
    i, c, a = incidents.c, corrections.c, audit_log.c
    reconciled = (
        sa.select(c.incident_id, sa.func.min(a.created_at).label("at"))
        .select_from(corrections.join(audit_log, a.run_id == c.run_id))
        .where(a.step == "handoff", a.action.in_(RECONCILED))
        .group_by(c.incident_id).subquery("reconciled")
    )
    q = (sa.select(i.campaign_id, i.opened_at, reconciled.c.at)
         .select_from(incidents.outerjoin(reconciled, reconciled.c.incident_id == i.incident_id)))
    if since is not None:
        q = q.where(i.opened_at >= run_status.utc_naive(since))
    if campaign_id is not None:
        q = q.where(i.campaign_id == campaign_id)
    opened: dict[str, int] = defaultdict(int)
    took: dict[str, list[float]] = defaultdict(list)
    with engine.connect() as conn:
        for campaign, at, done in conn.execute(q):  # one row per incident, no personal data
            opened[campaign] += 1
            if done is not None:
                took[campaign].append(max(0.0, _seconds(_ts(done) - at)))
    return {k: IncidentKpi(n, len(took[k]), _median(took[k])) for k, n in opened.items()}


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(statistics.median(vals)) if vals else None


def campaign_kpis(engine: Engine, since: dt.datetime | None = None,
                  campaign_id: str | None = None, *, now: dt.datetime | None = None,
                  asap_grace_minutes: float = ASAP_GRACE_MINUTES,
                  from_runs: Sequence[RunKpi] | None = None) -> list[CampaignKpi]:
    """Per campaign, over its runs created since `since`; pass `from_runs` (the result of
    run_kpis with the same filters) to avoid reading the audit trail twice."""
    where = _run_filter(since, campaign_id)

    def count(cond: Any) -> Any:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    q = (
        sa.select(
            runs.c.campaign_id,
            sa.func.count().label("runs"),
            count(runs.c.status == run_status.SENT).label("sent"),
            sa.func.sum(sa.case((runs.c.status == run_status.SENT,
                                 sa.func.coalesce(runs.c.recipients, 0)), else_=0)).label("recipients"),
            count(runs.c.status == run_status.QA_BLOCKED).label("blocked"),
            count(runs.c.status == run_status.REJECTED).label("rejected"),
            count(runs.c.status == run_status.EXPIRED).label("expired"),
            count(runs.c.status == run_status.FAILED).label("failed"),
            count(runs.c.dry_run.is_(True)).label("dry_runs"),
            count(runs.c.status.not_in(sorted(FINISHED))).label("in_progress"),
        )
        .where(*where)
        .group_by(runs.c.campaign_id)
        .order_by(runs.c.campaign_id)
    )
    with engine.connect() as conn:
        counts = conn.execute(q).all()
    per_run = list(from_runs) if from_runs is not None else run_kpis(
        engine, since, campaign_id, now=now, asap_grace_minutes=asap_grace_minutes)
    escaped = incident_kpis(engine, since, campaign_id)
    by_campaign: dict[str, list[RunKpi]] = defaultdict(list)
    for k in per_run:
        by_campaign[k.campaign_id].append(k)
    out = []
    for c in counts:
        ks = by_campaign.get(c.campaign_id, [])
        stage_values: dict[str, list[float]] = {}
        for k in ks:
            for stage, secs in k.stage_seconds.items():
                stage_values.setdefault(stage, []).append(secs)
        out.append(CampaignKpi(
            campaign_id=c.campaign_id, runs=int(c.runs), sent=int(c.sent or 0),
            recipients_sent=int(c.recipients or 0), blocked_by_qa=int(c.blocked or 0),
            rejected=int(c.rejected or 0), expired=int(c.expired or 0), failed=int(c.failed or 0),
            dry_runs=int(c.dry_runs or 0), in_progress=int(c.in_progress or 0),
            intake_rejections=sum(k.intake_rejections for k in ks),
            defects_caught=sum(k.defects_caught for k in ks),
            median_cycle_seconds=_median(k.cycle_seconds for k in ks
                                         if k.status == run_status.SENT and k.cycle_seconds is not None),
            median_approval_wait_seconds=_median(w for k in ks for w in k.approval_waits.values()),
            median_stage_seconds={s: m for s, v in stage_values.items()
                                  if (m := _median(v)) is not None},
            on_time=sum(1 for k in ks if k.on_time is True),
            due=sum(1 for k in ks if k.on_time is not None),
            **_incident_fields(escaped.get(c.campaign_id)),
        ))
    return out


def _incident_fields(found: IncidentKpi | None) -> dict[str, Any]:
    if found is None:
        return {}
    return {"incidents": found.incidents, "remediated": found.remediated,
            "median_remediate_seconds": found.median_remediate_seconds}


# -- presentation -------------------------------------------------------------------

def fmt_duration(seconds: float | None) -> str:
    """A short human duration: 45s, 12m 05s, 3h 07m, 2d 04h; '-' for none."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _fmt_on_time(on_time: int, due: int) -> str:
    return f"{on_time}/{due} ({100 * on_time / due:.0f}%)" if due else "-"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _waits(k: RunKpi) -> str:
    parts = []
    for stage, outcome in k.approval_outcomes.items():
        wait = k.approval_waits.get(stage)
        label = "standing" if outcome == "standing" else f"{fmt_duration(wait)} {outcome}"
        parts.append(f"{stage} {label}")
    if k.open_wait:
        parts.append(f"{k.open_wait} waiting")
    return ", ".join(parts) or "-"


def kpi_table_rows(campaigns: Sequence[CampaignKpi]) -> list[dict[str, Any]]:
    """One dict per campaign, for a Prefect table artifact (create_table_artifact)."""
    return [
        {
            "campaign": c.campaign_id,
            "runs": c.runs,
            "sent": c.sent,
            "recipients sent": c.recipients_sent,
            "blocked by QA": c.blocked_by_qa,
            "rejected": c.rejected,
            "expired": c.expired,
            "failed": c.failed,
            "back-and-forths": c.intake_rejections,
            "defects caught": c.defects_caught,
            "median cycle": fmt_duration(c.median_cycle_seconds),
            "median approval wait": fmt_duration(c.median_approval_wait_seconds),
            "on time": _fmt_on_time(c.on_time, c.due),
            "incidents (escaped QA)": c.incidents,
            "median time to remediate": (f"{fmt_duration(c.median_remediate_seconds)} "
                                         f"({c.remediated}/{c.incidents})" if c.incidents else "-"),
        }
        for c in campaigns
    ]


def run_table_rows(per_run: Sequence[RunKpi]) -> list[dict[str, Any]]:
    """One dict per run, for a Prefect table artifact or the terminal."""
    rows = []
    for k in per_run:
        approvals = sum(v for s, v in k.stage_seconds.items() if s.startswith("approval:"))
        has_approvals = any(s.startswith("approval:") for s in k.stage_seconds)
        rows.append({
            "run": k.run_id,
            "campaign": k.campaign_id,
            "status": k.status + (" (dry run)" if k.dry_run and k.status != run_status.COUNTED else ""),
            "accepted": k.accepted_at.strftime("%Y-%m-%d %H:%M") if k.accepted_at else "-",
            "back-and-forths": k.intake_rejections,
            "segmentation": fmt_duration(k.stage_seconds.get("segmentation")),
            "qa": fmt_duration(k.stage_seconds.get("qa")),
            "approvals": fmt_duration(approvals if has_approvals else None),
            "handoff": fmt_duration(k.stage_seconds.get("handoff")),
            "contact history": fmt_duration(k.stage_seconds.get("contact_history")),
            "cycle": fmt_duration(k.cycle_seconds),
            "approval waits": _waits(k),
            "defects": k.defects_caught,
            "on time": _flag(k.on_time),
        })
    return rows
