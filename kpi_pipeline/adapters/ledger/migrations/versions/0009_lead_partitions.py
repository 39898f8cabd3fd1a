"""Sensor-mode lead partitions: per-(batch, partition) completions and partition leases.

``cdc_batch_partitions``: a row per partition run that completed a batch; the batch is done
once all N partitions of one N have a row. ``cdc_partition_leases``: one row per partition
index, naming the run that holds it until it expires (rows, not advisory locks, so the lease
outlives one connection and works on SQLite, as ``cdc_channel_leases`` does).
``cdc_partition_links``: the stored link fields a round's partition runs resolve activities
with, read once per round so every run of the round uses the same copy.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cdc_batch_partitions",
        sa.Column("batch_id", sa.String(300), primary_key=True),
        sa.Column("partitions", sa.Integer, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("completed_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "cdc_partition_leases",
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "cdc_partition_links",
        sa.Column("round_key", sa.String(64), primary_key=True),
        sa.Column("sobject", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(32), primary_key=True),
        sa.Column("links", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cdc_partition_links")
    op.drop_table("cdc_partition_leases")
    op.drop_table("cdc_batch_partitions")
