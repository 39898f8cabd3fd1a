"""cdc_batches.after_replay: the replay id (hex) the fetch started after ('' = a preset).

Lets an interrupted sensor tick find the batch it staged but never acknowledged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cdc_batches") as batch:
        batch.add_column(
            sa.Column("after_replay", sa.String(64), nullable=False, server_default="")
        )
    op.create_index("ix_cdc_batches_after", "cdc_batches", ["channel", "after_replay"])


def downgrade() -> None:
    op.drop_index("ix_cdc_batches_after", "cdc_batches")
    with op.batch_alter_table("cdc_batches") as batch:
        batch.drop_column("after_replay")
