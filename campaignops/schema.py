"""The tables: the warehouse's input contract (never changed by campaignops) and campaignops' own.

campaignops' own tables (prefix ``co_``) are versioned with Alembic
(campaignops/migrations); this module is their current shape, which the newest
migration must produce (a test compares the two).
"""

from __future__ import annotations

import sqlalchemy as sa

# The warehouse data model (docs/product.md, the input contract): never changed by us.
warehouse_metadata = sa.MetaData()

customers = sa.Table(
    "customers",
    warehouse_metadata,
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(32)),
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("country", sa.String(2)),
    sa.Column("region", sa.String(64)),
    sa.Column("language", sa.String(8)),
    sa.Column("signup_date", sa.Date),
    sa.Column("lifecycle_stage", sa.String(16)),
    sa.Column("lead_score", sa.Integer),
    sa.Column("loyalty_tier", sa.String(16)),
    sa.Column("lifetime_value", sa.Numeric(12, 2)),
    sa.Column("last_purchase_at", sa.DateTime),
    sa.Column("last_open_at", sa.DateTime),
    sa.Column("household_id", sa.BigInteger),
    sa.Column("email_opt_in", sa.Boolean),
    sa.Column("sms_opt_in", sa.Boolean),
)

suppressions = sa.Table(
    "suppressions",
    warehouse_metadata,
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("address", sa.String(254), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_suppressions_channel_address", "channel", "address"),
)

contact_history = sa.Table(
    "contact_history",
    warehouse_metadata,
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("sent_at", sa.DateTime, nullable=False),
    sa.Index("ix_contact_history_customer_sent", "customer_id", "sent_at"),
)

offers = sa.Table(
    "offers",
    warehouse_metadata,
    sa.Column("offer_code", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(256)),
    sa.Column("valid_from", sa.DateTime, nullable=False),
    sa.Column("valid_to", sa.DateTime, nullable=False),
)

seed_recipients = sa.Table(
    "seed_recipients",
    warehouse_metadata,
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("label", sa.String(128)),
)

# Optional inputs of the data model: read when present, never required, never changed by us.
optional_metadata = sa.MetaData()

engagement_events = sa.Table(
    "engagement_events",
    optional_metadata,
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),  # email_open | email_click | web_visit | ...
    sa.Column("occurred_at", sa.DateTime, nullable=False),
    sa.Index("ix_engagement_events_customer", "customer_id", "occurred_at"),
)

# The project's own tables, beside the warehouse's (prefix co_).
project_metadata = sa.MetaData()

runs = sa.Table(
    "co_runs",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("brief_digest", sa.String(64), nullable=False),
    sa.Column("brief_json", sa.Text, nullable=False),  # the brief as accepted at intake
    sa.Column("brief_source", sa.String(512)),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("as_of", sa.DateTime, nullable=False),
    sa.Column("audience_digest", sa.String(64)),
    sa.Column("recipients", sa.Integer),
    sa.Column("waiting_stage", sa.String(64)),
    sa.Column("waiting_since", sa.DateTime),
    # Which process waits (an ad hoc run pauses in its own process): host and pid.
    sa.Column("waiting_host", sa.String(255)),
    sa.Column("waiting_pid", sa.Integer),
    sa.Column("contact_history_written", sa.Boolean, nullable=False, default=False),
    # Fixed at the first handoff attempt so every rerun cuts the same batches.
    sa.Column("batch_size", sa.Integer),
)

audience = sa.Table(
    "co_audience",
    project_metadata,
    sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.BigInteger),  # null for seed recipients
    sa.Column("email", sa.String(254)),
    sa.Column("address_key", sa.String(254)),  # lower(trim(email))
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("language", sa.String(8)),
    sa.Column("country", sa.String(2)),
    sa.Column("loyalty_tier", sa.String(16)),
    # The customer's stage at segmentation: the watch's composition reads it here, in the
    # run's own rows, not by a lookup into customers per send (migration 0010).
    sa.Column("lifecycle_stage", sa.String(16)),
    # outcome: send | control | excluded | seed
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),  # why excluded, null otherwise
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("is_seed", sa.Boolean, nullable=False, default=False),
    # One index, on the run: a segmentation's rows arrive in address order, and an index
    # keyed on anything else takes them in random order. Every reader selects one run's
    # rows (and most of them) anyway. At 10M customers (1.1M rows a run) the two indexes
    # this replaces, (run_id, outcome, customer_id) and (run_id, address_key), cost
    # PostgreSQL ~12 s of a 28 s INSERT; this one ~1 s (docs/segmentation.md).
    sa.Index("ix_co_audience_run", "run_id"),
)

audit_log = sa.Table(
    "co_audit",
    project_metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(254), nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # canonical JSON
    sa.Column("created_at", sa.String(32), nullable=False),  # ISO-8601 UTC
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # Numbered 1, 2, 3 ... without gaps, and signed with the audit key (campaignops.audit);
    # records from before signing began have a number and no MAC.
    sa.Column("n", sa.BigInteger),
    sa.Column("mac", sa.String(64)),
    sa.Column("key_id", sa.String(16)),
    sa.Index("ix_co_audit_run", "run_id"),
    sa.Index("uq_co_audit_n", "n", unique=True),
    # One successor per record: two writers racing on the same tail cannot fork the chain.
    sa.UniqueConstraint("prev_hash", name="uq_co_audit_prev_hash"),
)

ledger = sa.Table(
    "co_ledger",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("batch_seq", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(160), nullable=False),
    sa.Column("batch_digest", sa.String(64), nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("esp_batch_id", sa.String(128)),
    sa.Column("acked_at", sa.DateTime, nullable=False),
    # The ESP's rejections of this batch: JSON [{"customer_id", "reason"}] (no addresses).
    sa.Column("rejections", sa.Text),
)

deliveries = sa.Table(
    "co_deliveries",
    project_metadata,
    # Who got what, per recipient, written from the batches as posted and acknowledged (never
    # re-read from co_audience): the permanent record of a run's sends.
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("batch_seq", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.BigInteger),  # null for seed recipients
    sa.Column("address_key", sa.String(254), nullable=False),
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("is_seed", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # accepted | rejected
    sa.Column("reason", sa.String(200)),  # the ESP's reason for a rejection
    sa.Index("ix_co_deliveries_run", "run_id"),
)

holdout_contacts = sa.Table(
    "co_holdout_contacts",
    project_metadata,
    # The control group's would-be sends: one row per holdout customer of a run that was
    # handed off, at the time the treated were contacted. The frequency cap counts them as
    # it counts contact_history, so holdout and treated carry the same contact pressure.
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("contacted_at", sa.DateTime, nullable=False),
    sa.Index("ix_co_holdout_contacts_customer", "customer_id", "contacted_at"),
    sa.Index("ix_co_holdout_contacts_run", "run_id"),
)

approvers = sa.Table(
    "co_approvers",
    project_metadata,
    sa.Column("name", sa.String(254), primary_key=True),
    sa.Column("key_salt", sa.String(64), nullable=False),
    sa.Column("key_hash", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, default="person"),  # person | demo
    sa.Column("created_at", sa.DateTime, nullable=False),
)

approvals = sa.Table(
    "co_approvals",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True),
    sa.Column("approver", sa.String(254), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("packet_digest", sa.String(64), nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=False),
)

standing_approvals = sa.Table(
    "co_standing_approvals",
    project_metadata,
    sa.Column("grant_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("granted_by", sa.String(254), nullable=False),
    sa.Column("granted_in_run", sa.String(64), nullable=False),
    sa.Column("granted_at", sa.DateTime, nullable=False),
    sa.Column("revoked_by", sa.String(254)),
    sa.Column("revoked_at", sa.DateTime),
    sa.Index("ix_co_standing_campaign_stage", "campaign_id", "stage"),
)

sandbox_marker = sa.Table(
    "co_sandbox",
    project_metadata,
    # One row in a sandbox warehouse (campaignops sandbox create), none elsewhere: which
    # source it was masked from (credentials stripped), when, how. Never the key; key_id
    # is a one-way fingerprint (which key, not what key).
    sa.Column("sandbox_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("masking_version", sa.String(16), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("min_domain_count", sa.Integer, nullable=False),
    sa.Column("kept_columns", sa.Text, nullable=False),  # JSON list of customers columns kept as they are
    sa.Column("row_counts", sa.Text, nullable=False),  # JSON {table: rows}
)

incidents = sa.Table(
    "co_incidents",
    project_metadata,
    # A send that went wrong, reported against the run; the note is the reporter's words
    # (checked to hold no address) and never leaves the warehouse (not audited, not an event).
    sa.Column("incident_id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # wrong_offer | wrong_audience | missed | ...
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("reported_by", sa.String(254), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | closed
    sa.Column("opened_at", sa.DateTime, nullable=False),
    sa.Column("closed_at", sa.DateTime),
    sa.Column("closed_by", sa.String(254)),
    sa.Column("close_note", sa.Text),
    sa.Index("ix_co_incidents_run", "run_id"),
)

corrections = sa.Table(
    "co_corrections",
    project_metadata,
    # Which runs correct which incident: segmentation leaves out everyone an earlier
    # correction of the same incident reached, so nobody is corrected twice.
    sa.Column("incident_id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_co_corrections_run", "run_id", unique=True),
)

run_composition = sa.Table(
    "co_run_composition",
    project_metadata,
    # A run's send audience by dimension (country, lifecycle_stage, loyalty_tier, cell,
    # language) and its exclusions by cause (dimension 'excluded'), counted in SQL when the
    # run is segmented (campaignops.watch): what the watch compares runs with, cheaply.
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("dimension", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(64), primary_key=True),  # '(none)' for a null
    sa.Column("count", sa.BigInteger, nullable=False),
)

run_churn = sa.Table(
    "co_run_churn",
    project_metadata,
    # Who entered and who left since the campaign's previous sent run, counted by cause
    # (a waterfall reason, 'rule', 'new_customer', 'removed_customer') and country: counts only.
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("direction", sa.String(8), primary_key=True),  # entered | left
    sa.Column("cause", sa.String(64), primary_key=True),
    sa.Column("country", sa.String(8), primary_key=True),  # '(none)' for a null
    sa.Column("base_run_id", sa.String(64), nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
)

lifecycle_scores = sa.Table(
    "co_lifecycle_scores",
    project_metadata,
    # Every customer's score and stage as of the last scoring run (replaced by each run).
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("scored_at", sa.DateTime, nullable=False),
    sa.Column("stage_entered_at", sa.DateTime, nullable=False),
    # The score's parts as of scored_at: fit points, and the raw (uncapped) engagement that
    # an incremental rescoring decays forward for a customer whose inputs did not change.
    sa.Column("fit", sa.Float),
    sa.Column("engagement", sa.Float),
    sa.Index("ix_co_lifecycle_scores_stage", "stage", "stage_entered_at"),
)

lifecycle_history = sa.Table(
    "co_lifecycle_history",
    project_metadata,
    # Append-only: one row per stage change (a scoring run's or sales' acceptance);
    # a move backwards is a row with its reason. `actor` is the sales person, else null.
    sa.Column("history_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("scoring_id", sa.String(32)),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("from_stage", sa.String(16)),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(254)),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Index("ix_co_lifecycle_history_customer", "customer_id", "at"),
    sa.Index("ix_co_lifecycle_history_at", "at"),
    sa.Index("ix_co_lifecycle_history_scoring", "scoring_id"),
)

lifecycle_watermarks = sa.Table(
    "co_lifecycle_watermarks",
    project_metadata,
    # A triggered campaign's watermark: the last history row whose customers it was sent to;
    # or (campaign_id '@lifecycle-scoring', never a brief's id) the scoring's: the inputs read
    # through `as_of`. A claim (claimed_by, claimed_at) keeps two of either from overlapping.
    sa.Column("campaign_id", sa.String(128), primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("last_history_id", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("as_of", sa.DateTime),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_at", sa.DateTime),
)

sms_phones = sa.Table(
    "co_sms_phones",
    project_metadata,
    # An SMS run's phone numbers as E.164, normalised in Python (campaignops.sms.e164) in chunks
    # and joined by the segmentation's SQL: one row per rule-matching customer with a phone
    # (e164 null: not a number for their country) and one per sms suppression address
    # (customer_id null, with its reason). Replaced at each segmentation of the run.
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.BigInteger),
    sa.Column("e164", sa.String(16)),
    sa.Column("reason", sa.String(32)),
    sa.Index("ix_co_sms_phones_run", "run_id", "customer_id"),
)
