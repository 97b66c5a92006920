"""The SMS handoff's message: the brief's text and limit, and the send times quiet hours defer.

An SMS run's recipients go to the ESP's SMS endpoint (docs/esp-contract.md, "Posting an SMS
batch") with the segments of their message as rendered for them and, under
``quiet_hours_policy: defer``, their own ``send_at``: the end of their quiet window in all
their country's zones. The deferred times are a pure function of the brief and the run's
countries, so the approval packet (its send digest) covers them and a rerun posts the same
bodies.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import Brief
from campaignops.handoff.batches import SmsMessage
from campaignops.handoff.send_time import iso_z
from campaignops.qa.quiet_hours import is_quiet, quiet_end
from campaignops.schema import audience


def deferred_send_times(engine: Engine, run_id: str, brief: Brief) -> dict[str, str]:
    """Country -> the send time of its recipients when quiet hours defer them (policy defer only)."""
    quiet = brief.quiet_hours
    if quiet is None or brief.quiet_policy != "defer" or brief.send_at is None:
        return {}
    q = (sa.select(audience.c.country).distinct()
         .where(audience.c.run_id == run_id, audience.c.outcome == "send", audience.c.country.is_not(None)))
    with engine.connect() as conn:
        countries = [str(c) for (c,) in conn.execute(q)]
    out: dict[str, str] = {}
    for country in sorted(countries):
        if is_quiet(country, brief.send_at, quiet):
            out[country] = str(iso_z(quiet_end(country, brief.send_at, quiet)))
    return out


def sms_message(engine: Engine, run_id: str, brief: Brief) -> SmsMessage | None:
    """The run's SMS message (None for an e-mail run)."""
    if brief.channel != "sms":
        return None
    if not brief.content.text:  # intake requires it; a stored brief is trusted only this far
        raise ValueError(f"run {run_id}: an SMS brief without content.text")
    return SmsMessage(brief.content.text, brief.segment_limit, deferred_send_times(engine, run_id, brief))
