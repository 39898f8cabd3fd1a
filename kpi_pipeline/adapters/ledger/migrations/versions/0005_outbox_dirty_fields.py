"""The outbox marks dirty fields per record instead of storing value snapshots.

Before: one row per (record, values), re-sent as stored, so a stale snapshot could
overwrite a newer value in Salesforce. After: one row per record with the names of its
dirty fields; the drain reads the ledger's values when it sends. Carried over: the field
names of every unsent row (pending, claimed or failed) as dirty, and the values of sent
rows (merged in id order) as what Salesforce confirmed, which the order rules compare
against.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.String(32)


def upgrade() -> None:
    bind = op.get_bind()
    old = sa.table(
        "sf_outbox",
        sa.column("id"),
        sa.column("sobject"),
        sa.column("record_id"),
        sa.column("fields", sa.JSON),
        sa.column("status"),
        sa.column("created_at", UTCDateTime),
        sa.column("sent_at", UTCDateTime),
    )
    carried = _carry_over(bind.execute(sa.select(old).order_by(old.c.id)).all())
    op.drop_index("ix_sf_outbox_status", "sf_outbox")
    op.drop_table("sf_outbox")
    new = op.create_table(
        "sf_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sobject", sa.String(64), nullable=False),
        sa.Column("record_id", ID, nullable=False),
        sa.Column("dirty", sa.JSON, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("dirtied_at", UTCDateTime),
        sa.Column("claim_token", sa.String(36)),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("confirmed", sa.JSON, nullable=False),
        sa.UniqueConstraint("sobject", "record_id", name="uq_sf_outbox_record"),
    )
    op.create_index("ix_sf_outbox_status", "sf_outbox", ["status", "dirtied_at"])
    if carried:
        op.bulk_insert(new, carried)


def _carry_over(rows: list[Any]) -> list[dict[str, Any]]:
    by_record: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        fields = json.loads(row.fields) if isinstance(row.fields, str) else dict(row.fields)
        entry = by_record.setdefault(
            (row.sobject, row.record_id),
            {
                "sobject": row.sobject,
                "record_id": row.record_id,
                "dirty": set(),
                "generation": 1,
                "attempts": 0,
                "created_at": row.created_at or datetime.now(UTC),
                "dirtied_at": None,
                "sent_at": None,
                "confirmed": {},
            },
        )
        if row.status == "sent":
            entry["confirmed"].update(fields)
            entry["sent_at"] = row.sent_at
        else:
            entry["dirty"].update(fields)
            entry["dirtied_at"] = entry["dirtied_at"] or row.created_at
    carried = []
    for entry in by_record.values():
        entry["status"] = "pending" if entry["dirty"] else "sent"
        entry["dirty"] = sorted(entry["dirty"])
        carried.append(entry)
    return carried


def downgrade() -> None:
    op.drop_index("ix_sf_outbox_status", "sf_outbox")
    op.drop_table("sf_outbox")
    op.create_table(
        "sf_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sobject", sa.String(64), nullable=False),
        sa.Column("record_id", ID, nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("fields_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("sent_at", UTCDateTime),
        sa.UniqueConstraint("sobject", "record_id", "fields_hash", name="uq_sf_outbox_values"),
    )
    op.create_index("ix_sf_outbox_status", "sf_outbox", ["status", "id"])
