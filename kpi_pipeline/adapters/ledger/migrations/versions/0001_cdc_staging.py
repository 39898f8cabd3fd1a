"""CDC staging: inbox, schemas, batches, dead letters, re-sync windows.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cdc_schemas",
        sa.Column("schema_id", sa.String(128), primary_key=True),
        sa.Column("schema_json", sa.Text, nullable=False),
    )
    op.create_table(
        "cdc_batches",
        sa.Column("batch_id", sa.String(300), primary_key=True),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.Column("first_replay_hex", sa.String(64), nullable=False),
        sa.Column("last_replay_hex", sa.String(64), nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("staged_at", UTCDateTime, nullable=False),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("run_id", sa.String(128)),
        sa.Column("summary", sa.JSON),
    )
    op.create_index("ix_cdc_batches_status", "cdc_batches", ["status", "staged_at"])
    op.create_table(
        "cdc_inbox",
        sa.Column("channel", sa.String(255), primary_key=True),
        sa.Column("replay_id", sa.LargeBinary, primary_key=True),
        sa.Column("batch_id", sa.String(300), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("schema_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("staged_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_cdc_inbox_batch", "cdc_inbox", ["batch_id", "position"])
    op.create_table(
        "dead_letters",
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
    op.create_table(
        "resync_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("from_replay", sa.String(64)),
        sa.Column("from_time", sa.BigInteger),
        sa.Column("to_time", sa.BigInteger),
        sa.Column("from_key", sa.String(128), nullable=False),
        sa.Column("detail", sa.JSON),
        sa.Column("detected_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_at", UTCDateTime),
        sa.UniqueConstraint("channel", "reason", "from_key", name="uq_resync_windows_start"),
    )


def downgrade() -> None:
    for table in ("resync_windows", "dead_letters", "cdc_inbox", "cdc_batches", "cdc_schemas"):
        op.drop_table(table)
