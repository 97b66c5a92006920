"""Markdown for Prefect artifacts: every artifact campaignops publishes is rendered here.

Domain code returns typed results; these functions turn them into the tables a person
reads in the Prefect UI. Counts, check names and masked samples only: never an address.
"""

from __future__ import annotations

from pathlib import Path

from campaignops.approval import Packet
from campaignops.handoff import HandoffOutcome
from campaignops.handoff.file import FileHandoff
from campaignops.incidents import ImpactReport
from campaignops.intake import Intake
from campaignops.qa import QAResult
from campaignops.results import RunResults, result_rows, summary_lines
from campaignops.segmentation import Waterfall


def intake_markdown(accepted: Intake) -> str:
    """The intake artifact: the brief's digest, cells, offers and stages."""
    return (
        f"### Brief accepted: {accepted.campaign_id}\n\n"
        f"- brief digest `{accepted.brief_digest[:16]}…`\n"
        f"- cells: {', '.join(accepted.cells)}; offers: {', '.join(accepted.offers) or 'none'}\n"
        f"- approval stages: {', '.join(accepted.stages)}\n- mode: {accepted.mode}\n"
        + "".join(f"- warning: {_md(w)}\n" for w in accepted.warnings)
    )


def waterfall_markdown(wf: Waterfall) -> str:
    """The waterfall as a markdown table."""
    lines = [
        f"### Audience waterfall: {wf.campaign_id}",
        "",
        "| step | removed | remaining |",
        "|---|---:|---:|",
        f"| matched the brief's rules | | {wf.matched:,} |",
    ]
    for s in wf.steps:
        lines.append(f"| {s['label']} | {s['removed']:,} | {s['remaining']:,} |")
    lines.append(f"| control group (held out) | {wf.control:,} | {wf.eligible - wf.control:,} |")
    for name, n in wf.cells.items():
        lines.append(f"| cell `{name}` | | {n:,} |")
    lines.append(f"| seed recipients added | +{wf.seeds} | |")
    lines.append(f"| **recipients to hand off** | | **{wf.recipients:,}** |")
    return "\n".join(lines)


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def qa_markdown(result: QAResult) -> str:
    """The QA result as a Markdown table (for a Prefect markdown artifact)."""
    verdict = "PASSED" if result.passed else "BLOCKED"
    lines = [
        f"## QA suite `{result.suite}`: {verdict}",
        "",
        f"{len(result.checks)} checks, {len(result.failed_critical)} critical failed, "
        f"{len(result.warnings)} warnings, {result.seconds:.2f} s.",
        "",
        "| check | level | observed | threshold | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in result.checks:
        level = "critical" if c.critical else "warning"
        observed = "n/a" if c.observed is None else c.observed
        if c.passed:
            mark = "pass"
        elif c.error:
            mark = f"**ERROR** ({c.error})"
        else:
            mark = "**FAIL**" if c.critical else "**WARN**"
        lines.append(f"| {_md(c.name)} | {level} | {_md(observed)} | {_md(c.threshold)} | {_md(mark)} |")
    if result.skipped:
        lines += ["", "Not applicable: " + "; ".join(_md(s) for s in result.skipped) + "."]
    if result.data_docs is not None:
        lines += ["", f"Great Expectations Data Docs: [{_md(result.data_docs.name)}]"
                      f"({Path(result.data_docs).resolve().as_uri()}) (`{_md(result.data_docs)}`)."]
    return "\n".join(lines) + "\n"


def packet_markdown(p: Packet, links: dict[str, str] | None = None) -> str:
    """The approval packet an approver reads; ``links``: the UI addresses of the QA and waterfall artifacts."""
    wf, qa = p.waterfall, p.qa
    links = links or {}
    lines: list[str] = [
        f"## Approval packet: {p.name} ({p.campaign_id}), stage `{p.stage}`",
        "",
        *(["**Since the recent runs** ([docs/watch.md](docs/watch.md)):", "",
            *(f"- {_md(line)}" for line in p.watch), ""] if p.watch else []),
        "Open before deciding: " + " · ".join(_packet_links(links, qa.data_docs)),
        "",
        f"- run: `{p.run_id}`",
        f"- owner: {p.owner}; approvers for this stage: {', '.join(p.approvers)}",
        f"- objective: {p.objective}",
        f"- standing approval: {'allowed by the brief' if p.standing_allowed else 'not allowed'}",
        f"- send time: {p.send_at.isoformat() if p.send_at else 'as soon as the last approval is given'}",
        f"- recipients: **{wf.recipients:,}** ({wf.seeds} seeds), control held out: {wf.control:,}",
        f"- QA: {'passed' if qa.passed else 'BLOCKED'}, {qa.checks} checks, "
        f"warnings: {', '.join(qa.warnings) or 'none'}",
        *(f"- {_md(line)}" for line in p.sms),
        f"- approval binds to packet digest `{p.packet_digest[:16]}…` (brief `{p.brief_digest[:12]}…`, "
        f"audience `{p.audience_digest[:12]}…`)",
        "",
        "| cell | offer | recipients |",
        "|---|---|---:|",
    ]
    for cell, offer, n in p.cells:
        lines.append(f"| {cell} | {offer or '-'} | {n:,} |")
    lines += ["", "Sample recipients (masked):", "", "| customer | address | first name | cell | offer |",
              "|---:|---|---|---|---|"]
    for r in p.samples:
        lines.append(f"| {r['customer_id']} | {r['address']} | {r['first_name']} | {r['cell']} | "
                     f"{r['offer_code'] or '-'} |")
    lines += ["", f"Approve: `campaignops approve {p.run_id} --as NAME --stage {p.stage}` "
              "or fill the form on this paused run in the Prefect UI."]
    return "\n".join(lines)


def _packet_links(links: dict[str, str], data_docs: str | None) -> list[str]:
    shown = [f"[{label}]({links[what]})" for what, label in
             (("qa", "QA results"), ("waterfall", "audience waterfall")) if what in links]
    if data_docs:
        shown.append(f"[Great Expectations Data Docs]({Path(data_docs).resolve().as_uri()}) "
                     f"(`{_md(data_docs)}`, open it on the machine that ran QA)")
    return shown or ["the QA and waterfall artifacts of this run (Artifacts tab)"]


def handoff_markdown(out: HandoffOutcome) -> str:
    """The handoff artifact: batch counts (http) or the released file (file); counts only."""
    reconciled = "yes" if out.reconciled else "NO"
    if isinstance(out, FileHandoff):
        state = "released now" if out.released else "already released (unchanged)"
        return (
            f"### Handoff report (file drop)\n\n| measure | value |\n|---|---:|\n"
            f"| file | `{out.csv_path}` |\n| manifest | `{out.manifest_path}` |\n"
            f"| rows | {out.rows:,} |\n| sha256 | `{out.sha256}` |\n"
            f"| recipients approved | {out.approved:,} |\n"
            f"| file QA | {'passed' if out.qa_passed else 'FAILED'} ({out.qa_checks} checks) |\n"
            f"| state | {state} |\n| reconciled | {reconciled} |\n" + _afterwards(out.run_id)
        )
    rep, rec = out.report, out.reconciliation
    return (
        f"### Handoff report\n\n| measure | value |\n|---|---:|\n"
        f"| batches | {rep.batches} |\n| posted now | {rep.sent} |\n"
        f"| already acknowledged (skipped) | {rep.skipped} |\n"
        f"| recipients approved | {rec.approved:,} |\n| accepted by ESP | {rec.accepted:,} |\n"
        f"| rejected by ESP | {rec.rejected:,} |\n"
        + ("" if rec.segments is None else f"| SMS segments billed | {rec.segments:,} |\n")
        + f"| reconciled | {reconciled} |\n" + _afterwards(out.run_id)
    )


def _afterwards(run_id: str) -> str:
    """What a reader of the handoff report does next: the audit trail, and a report of a fault."""
    return (f"\nAudit trail of this run: `campaignops audit show {run_id}` "
            f"(and `campaignops audit verify` for the whole chain). Who got what: "
            f"`campaignops audit recipients {run_id}`. Something went wrong with this send? "
            f"`campaignops incident open {run_id} --kind wrong_offer|wrong_audience|missed|"
            f"wrong_content|other --reported-by NAME --note TEXT` (docs/remediation.md).\n")


def results_markdown(res: RunResults, chart: Path | None = None) -> str:
    """The results artifact: treated vs holdout per cell, the notes, the curve (counts and rates)."""
    rows = result_rows(res)
    cols = list(rows[0])
    lines = [f"### Results: {res.campaign_id} run `{res.run_id}`", ""]
    lines += [f"- {_md(line)}" for line in summary_lines(res)]
    lines += ["", "| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    lines += ["| " + " | ".join(_md(r[c]) for c in cols) + " |" for r in rows]
    if res.curve:
        days = [d for d, _ in next(iter(res.curve.values())) if d in (1, 3, 7, 14, 21, 30)]
        lines += ["", "Converted share by day since the send:", "",
                  "| group | " + " | ".join(f"day {d}" for d in days) + " |",
                  "|---" + "|---:" * len(days) + "|"]
        for name, pts in res.curve.items():
            by_day = dict(pts)
            lines.append(f"| {_md(name)} | " + " | ".join(f"{by_day[d]:.2%}" for d in days) + " |")
    if chart is not None:
        lines += ["", f"Chart (SVG): [{chart.name}]({chart.as_uri()})"]
    return "\n".join(lines) + "\n"


def impact_markdown(report: ImpactReport) -> str:
    """The incident's impact report: counts by cell and offer, approvals, QA, actions since."""
    inc = report.incident
    lines = [
        f"### Incident {inc.incident_id}: {inc.kind} in {inc.campaign_id}",
        "",
        f"- run `{inc.run_id}`; status **{inc.status}**; opened {inc.opened_at:%Y-%m-%d %H:%M} UTC "
        f"by {inc.reported_by}; routed to {', '.join(report.route)}",
        f"- scope: cell {inc.cell or 'all'}, offer {inc.offer_code or 'all'}",
        f"- affected: **{report.affected_customers:,}** customers accepted by the ESP",
        "",
        "| outcome | cell | offer | customers | seeds |",
        "|---|---|---|---:|---:|",
    ]
    lines += [f"| {r.outcome} | {r.cell or '-'} | {r.offer_code or '-'} | {r.customers:,} | {r.seeds:,} |"
              for r in report.affected]
    lines += ["", "| stage | approver | decision | packet digest | at (UTC) |", "|---|---|---|---|---|"]
    lines += [f"| {a.stage} | {a.approver} | {a.decision} | `{a.packet_digest[:16]}…` | {a.at} |"
              for a in report.approvals]
    qa = "not recorded" if report.qa_passed is None else ("passed" if report.qa_passed else "blocked")
    lines += ["", f"QA {qa}: {len(report.qa_checks)} checks passed ({', '.join(report.qa_checks) or 'none'})"
              + (f"; warnings: {', '.join(report.qa_warnings)}" if report.qa_warnings else "")]
    lines += ["", "| at (UTC) | action | by | run |", "|---|---|---|---|"]
    lines += [f"| {a['at']} | {a['action']} | {a['actor']} | `{a['run']}` |" for a in report.actions]
    if report.corrections:
        lines += ["", "| correction run | status | delivered |", "|---|---|---:|"]
        lines += [f"| `{c.run_id}` | {c.status} | {c.delivered:,} |" for c in report.corrections]
    return "\n".join(lines) + "\n"
