"""The replay store: per channel, the durable replay id a CDC subscriber resumes after.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cdc_replay_ids",
        sa.Column("channel", sa.String(255), primary_key=True),
        sa.Column("replay_id", sa.LargeBinary, nullable=False),
        sa.Column("commit_ms", sa.BigInteger),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("updated_by", sa.String(16), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cdc_replay_ids")
