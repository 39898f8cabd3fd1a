"""Email→activity links (re-evaluate emails when their Task arrives late) and outreach sends.

``email_activity_links`` is filled from the stored EmailMessage states, so a ledger
upgraded in place links the emails it already holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.String(32)


def upgrade() -> None:
    links = op.create_table(
        "email_activity_links",
        sa.Column("email_id", ID, primary_key=True),
        sa.Column("activity_id", ID, nullable=False),
    )
    op.create_index("ix_email_activity_links_activity", "email_activity_links", ["activity_id"])
    op.create_table(
        "outreach_sends",
        sa.Column("lead_id", ID, primary_key=True),
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("to_address", sa.String(255)),
        sa.Column("error", sa.Text),
        sa.Column("started_at", UTCDateTime),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_outreach_sends_status", "outreach_sends", ["status"])
    _link_stored_emails(links)


def _link_stored_emails(links: sa.Table) -> None:
    """Backfill the links of the EmailMessage states already in ``records``."""
    bind = op.get_bind()
    records = sa.table("records", sa.column("sobject"), sa.column("state", sa.JSON))
    rows = []
    for (state,) in bind.execute(
        sa.select(records.c.state).where(records.c.sobject == "EmailMessage")
    ):
        document = json.loads(state) if isinstance(state, str) else state
        activity_id = (document.get("fields") or {}).get("ActivityId")
        if isinstance(activity_id, str) and activity_id:
            rows.append({"email_id": document["record_id"], "activity_id": activity_id})
    if rows:
        op.bulk_insert(links, rows)


def downgrade() -> None:
    op.drop_index("ix_outreach_sends_status", "outreach_sends")
    op.drop_table("outreach_sends")
    op.drop_index("ix_email_activity_links_activity", "email_activity_links")
    op.drop_table("email_activity_links")
