"""The synthetic warehouse's optional engagement_events: behaviour at realistic rates.

Per customer over the last 180 days, Poisson counts per event type (opens most, purchases
fewest), scaled by the customer's lead_score and zero without email opt-in for email
events; times are skewed to the recent past. Read and written a chunk of customer ids at a
time, never the whole table; the same seed gives the same events.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.bulk import BulkInsert
from campaignops.schema import customers, engagement_events

# Mean events per customer in 180 days at lead_score 50 (B2C email programme rates).
RATES = {"email_open": 6.0, "email_click": 1.2, "web_visit": 3.0, "form_submit": 0.15, "purchase": 0.3}
EMAIL_EVENTS = ("email_open", "email_click")
WINDOW_DAYS = 180
MEAN_AGE_DAYS = 45.0


def generate_engagement_events(engine: Engine, as_of: dt.datetime, seed: int = 42,
                               chunk: int = 100_000) -> int:
    """(Re)create engagement_events from the customers table; how many events."""
    engagement_events.drop(engine, checkfirst=True)
    engagement_events.create(engine)
    rng = np.random.default_rng(seed + 16)
    as_of = as_of.replace(tzinfo=None, microsecond=0)
    total, last = 0, None
    c = customers.c
    while True:
        q = sa.select(c.customer_id, c.lead_score, c.email_opt_in).order_by(c.customer_id).limit(chunk)
        if last is not None:
            q = q.where(c.customer_id > last)
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return total
        last = rows[-1][0]
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        scale = np.array([(r[1] if r[1] is not None else 20) / 50.0 for r in rows])
        opted = np.array([bool(r[2]) for r in rows])
        out: list[tuple[int, str, dt.datetime]] = []
        for kind, rate in RATES.items():
            lam = rate * scale * (opted if kind in EMAIL_EVENTS else 1.0)
            counts = rng.poisson(lam)
            who = np.repeat(ids, counts)
            ages = np.minimum(rng.exponential(MEAN_AGE_DAYS, who.size), WINDOW_DAYS) * 86400.0
            out += [(int(cid), kind, as_of - dt.timedelta(seconds=int(a))) for cid, a in zip(who, ages, strict=True)]
        with engine.begin() as conn:
            total += BulkInsert(conn, engagement_events, ["customer_id", "event_type", "occurred_at"]).write(out)
