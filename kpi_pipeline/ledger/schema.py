"""Ledger tables (SQLAlchemy Core). The migrations in ``migrations/versions`` create them;
this module is what queries are written against, and a test checks both agree.

Conventions:
* replay ids are stored as the opaque bytes they are (``LargeBinary``); hex text only
  where a key must be text (batch ids, resync window starting points);
* every time is an aware UTC datetime (``UTCDateTime``), whatever the dialect stores;
* JSON documents use ``sa.JSON`` (``json``/TEXT), written with sorted keys by the store.
"""

from __future__ import annotations

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
