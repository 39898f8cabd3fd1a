"""One consumer per CDC channel: lease rows with a holder and an expiry.

A lease row works the same on SQLite and PostgreSQL (an advisory lock would not survive
on SQLite, and dies with its connection rather than with its holder's heartbeat).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cdc_channel_leases",
        sa.Column("channel", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cdc_channel_leases")
