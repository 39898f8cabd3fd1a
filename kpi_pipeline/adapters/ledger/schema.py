"""Ledger tables (SQLAlchemy Core). The migrations in ``migrations/versions`` create them;
this module is what queries are written against, and a test checks both agree.

Conventions:
* replay ids are stored as the opaque bytes they are (``LargeBinary``); hex text only
  where a key must be text (batch ids, resync window starting points);
* every time is an aware UTC datetime (``UTCDateTime``), whatever the dialect stores;
* JSON documents use ``sa.JSON`` (``json``/TEXT), written with sorted keys by the store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike.

    SQLite has no time zone support and hands back naive values; PostgreSQL's
    ``timestamptz`` hands back the session zone. Normalising here keeps callers simple.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r}: the ledger stores aware UTC datetimes only"
            )
        utc = value.astimezone(UTC)
        # SQLite compares the stored text; a fixed naive UTC form keeps ordering correct.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite the value is text in SQLAlchemy's DATETIME storage form
    # ("2026-01-02 03:04:05.000006"). The two processors below convert in one step what
    # the decorator and DATETIME's own processors do in two: every lead-facts row a batch
    # writes or reads has seven of these columns, and the generic pair cost about 5 % of a
    # replay (bench/RESULTS.md, Replay). The text is the same, byte for byte.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: Any) -> str | None:
            naive = self.process_bind_param(value, dialect)
            return None if naive is None else naive.isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            return self.process_result_value(datetime.fromisoformat(value), dialect)

        return process


metadata = sa.MetaData()

# --- migration 0001: CDC staging --------------------------------------------------------

cdc_schemas = sa.Table(
    "cdc_schemas",
    metadata,
    sa.Column("schema_id", sa.String(128), primary_key=True),
    sa.Column("schema_json", sa.Text, nullable=False),
)

cdc_batches = sa.Table(
    "cdc_batches",
    metadata,
    sa.Column("batch_id", sa.String(300), primary_key=True),
    sa.Column("channel", sa.String(255), nullable=False),
    sa.Column("first_replay_hex", sa.String(64), nullable=False),
    sa.Column("last_replay_hex", sa.String(64), nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # staged | done
    sa.Column("staged_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("run_id", sa.String(128)),
    sa.Column("summary", sa.JSON),
    # 0002: replay id (hex) the fetch started after; '' when it started from a preset.
    sa.Column("after_replay", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_cdc_batches_status", "status", "staged_at"),
    sa.Index("ix_cdc_batches_after", "channel", "after_replay"),
)

cdc_inbox = sa.Table(
    "cdc_inbox",
    metadata,
    sa.Column("channel", sa.String(255), primary_key=True),
    sa.Column("replay_id", sa.LargeBinary, primary_key=True),
    sa.Column("batch_id", sa.String(300), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # delivery order within the batch
    sa.Column("schema_id", sa.String(128), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("staged_at", UTCDateTime, nullable=False),
    sa.Index("ix_cdc_inbox_batch", "batch_id", "position"),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(255), nullable=False),
    sa.Column("replay_id", sa.LargeBinary, nullable=False),
    sa.Column("batch_id", sa.String(300)),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel", "replay_id", "stage", name="uq_dead_letters_event_stage"),
)

resync_windows = sa.Table(
    "resync_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("from_replay", sa.String(64)),  # hex
    sa.Column("from_time", sa.BigInteger),  # epoch ms
    sa.Column("to_time", sa.BigInteger),  # epoch ms; NULL = up to whenever the re-sync runs
    # "<from_replay hex>@<from_time>": NULLs never collide in a unique index, this does.
    sa.Column("from_key", sa.String(128), nullable=False),
    sa.Column("detail", sa.JSON),
    sa.Column("detected_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | closed
    sa.Column("closed_at", UTCDateTime),
    sa.UniqueConstraint("channel", "reason", "from_key", name="uq_resync_windows_start"),
)

# --- migration 0003: workload state, decisions, outbox ----------------------------------

records = sa.Table(
    "records",
    metadata,
    sa.Column("sobject", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),  # RecordState.to_json()
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

lead_facts = sa.Table(
    "lead_facts",
    metadata,
    sa.Column("Id", sa.String(32), primary_key=True),
    sa.Column("CreatedDate", UTCDateTime),
    sa.Column("OwnerId", sa.String(32)),
    sa.Column("Owner_Assigned_At__c", UTCDateTime),
    sa.Column("Assignment_Latency_Minutes__c", sa.Float),
    sa.Column("First_Response_At__c", UTCDateTime),
    sa.Column("First_Response_User__c", sa.String(32)),
    sa.Column("First_Response_Source__c", sa.String(16)),
    sa.Column("Time_to_First_Response__c", sa.Float),
    sa.Column("Template_Recommended__c", sa.String(255)),
    sa.Column("Template_Applied__c", sa.String(255)),
    sa.Column("Routing_Policy_Version__c", sa.String(64)),
    sa.Column("Routing_Rule__c", sa.String(255)),
    sa.Column("SLA_Minutes", sa.Float),
    # Tie-breakers of the first response, so the SQL guard compares (at, rank, record id).
    sa.Column("first_response_rank", sa.Integer),
    sa.Column("first_response_record_id", sa.String(32)),
    # The email Template_Applied__c came from; only an earlier outbound email replaces it.
    sa.Column("template_applied_at", UTCDateTime),
    sa.Column("template_applied_record_id", sa.String(32)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # 0008: business-hours clocks. The calendar the SLA counts (NULL: 24x7), the due time
    # in it, and TTFR in its open minutes.
    sa.Column("Time_to_First_Response_Business_Minutes__c", sa.Float),
    sa.Column("SLA_Calendar", sa.String(64)),
    sa.Column("SLA_Due_At", UTCDateTime),
    sa.Index("ix_lead_facts_created", "CreatedDate"),
)

response_candidates = sa.Table(
    "response_candidates",
    metadata,
    sa.Column("record_id", sa.String(32), primary_key=True),
    sa.Column("lead_id", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("user_id", sa.String(32)),
    sa.Index("ix_response_candidates_lead", "lead_id"),
)

routing_decisions = sa.Table(
    "routing_decisions",
    metadata,
    sa.Column("lead_id", sa.String(32), primary_key=True),
    sa.Column("decision", sa.JSON, nullable=False),  # RoutingDecision.to_json()
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("policy_version", sa.String(64), nullable=False),
)

pool_state = sa.Table(
    "pool_state",
    metadata,
    sa.Column("pool_id", sa.String(128), primary_key=True),
    sa.Column("pointer", sa.Integer, nullable=False),
    sa.Column("day", sa.String(10)),
    sa.Column("assigned_today", sa.JSON, nullable=False),
    sa.Column("state", sa.JSON),  # the full PoolState JSON, whatever extra it carries
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

template_recommendations = sa.Table(
    "template_recommendations",
    metadata,
    sa.Column("lead_id", sa.String(32), primary_key=True),
    sa.Column("template_id", sa.String(255), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("detail", sa.JSON),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("workload", sa.String(32), nullable=False),
    sa.Column("lead_id", sa.String(32), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("policy_version", sa.String(64)),
    sa.Column("rule_id", sa.String(255)),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("replay_ids", sa.JSON, nullable=False),  # hex strings of the triggering events
    sa.Index("ix_decisions_time", "decided_at", "workload"),
)

sf_outbox = sa.Table(
    # One row per record: which of its fields are dirty (values are read from the ledger
    # when sent), the claim on it, and the values Salesforce last confirmed (migration 0005).
    "sf_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sobject", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(32), nullable=False),
    sa.Column("dirty", sa.JSON, nullable=False),  # sorted field names still to send
    sa.Column("generation", sa.Integer, nullable=False),  # bumped by every mark
    sa.Column("status", sa.String(16), nullable=False),  # pending | claimed | sent | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("dirtied_at", UTCDateTime),  # since when something waits to be sent
    sa.Column("claim_token", sa.String(36)),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("confirmed", sa.JSON, nullable=False),  # field -> value Salesforce confirmed
    sa.UniqueConstraint("sobject", "record_id", name="uq_sf_outbox_record"),
    sa.Index("ix_sf_outbox_status", "status", "dirtied_at"),
)

# --- migration 0004: email→activity links, outreach email sends ---------------------------

# EmailMessage id -> its ActivityId (the Task that logs it), kept by ``save_records`` so a
# Task that arrives after its email finds the email again (index on activity_id).
email_activity_links = sa.Table(
    "email_activity_links",
    metadata,
    sa.Column("email_id", sa.String(32), primary_key=True),
    sa.Column("activity_id", sa.String(32), nullable=False),
    sa.Index("ix_email_activity_links_activity", "activity_id"),
)

# One row per lead we tried to email (``kpi_pipeline.app.outreach_send``): the row is written
# as ``sending`` and committed before the call, so a lead is emailed at most once.
outreach_sends = sa.Table(
    "outreach_sends",
    metadata,
    sa.Column("lead_id", sa.String(32), primary_key=True),
    sa.Column("template_id", sa.String(255), nullable=False),
    # sending | sent | retry | failed | skipped | unconfirmed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("to_address", sa.String(255)),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_outreach_sends_status", "status"),
)

# --- migration 0006: the replay store ----------------------------------------------------

# Per channel, the replay id up to which CDC events are durably staged (advanced in the
# same transaction that stages them), so a subscriber restarts exactly there.
cdc_replay_ids = sa.Table(
    "cdc_replay_ids",
    metadata,
    sa.Column("channel", sa.String(255), primary_key=True),
    sa.Column("replay_id", sa.LargeBinary, nullable=False),  # opaque bytes
    sa.Column("commit_ms", sa.BigInteger),  # commit time of the newest staged event
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(16), nullable=False),  # stream | operator
)

# --- migration 0007: one consumer per CDC channel ------------------------------------------

cdc_channel_leases = sa.Table(
    "cdc_channel_leases",
    metadata,
    sa.Column("channel", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),  # a stream run's id
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# --- migration 0009: sensor-mode lead partitions (adapters/ledger/partitions.py) -----------

cdc_batch_partitions = sa.Table(
    "cdc_batch_partitions",
    metadata,
    sa.Column("batch_id", sa.String(300), primary_key=True),
    sa.Column("partitions", sa.Integer, primary_key=True),  # N the run was one of
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("completed_at", UTCDateTime, nullable=False),
)

cdc_partition_leases = sa.Table(
    "cdc_partition_leases",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("partitions", sa.Integer, nullable=False),
    sa.Column("holder", sa.String(128), nullable=False),  # the root run id of a processing run
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

cdc_partition_links = sa.Table(
    "cdc_partition_links",
    metadata,
    sa.Column("round_key", sa.String(64), primary_key=True),  # of the round's batch ids and N
    sa.Column("sobject", sa.String(64), primary_key=True),  # '' marks a round without any
    sa.Column("record_id", sa.String(32), primary_key=True),
    sa.Column("links", sa.JSON, nullable=False),  # the activity's stored link fields
)
