"""Workload state: records, lead facts, response candidates, routing memo, pool state,
template recommendations, decisions (flywheel source) and the Salesforce outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("sobject", sa.String(64), primary_key=True),
        sa.Column("id", ID, primary_key=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "lead_facts",
        sa.Column("Id", ID, primary_key=True),
        sa.Column("CreatedDate", UTCDateTime),
        sa.Column("OwnerId", ID),
        sa.Column("Owner_Assigned_At__c", UTCDateTime),
        sa.Column("Assignment_Latency_Minutes__c", sa.Float),
        sa.Column("First_Response_At__c", UTCDateTime),
        sa.Column("First_Response_User__c", ID),
        sa.Column("First_Response_Source__c", sa.String(16)),
        sa.Column("Time_to_First_Response__c", sa.Float),
        sa.Column("Template_Recommended__c", sa.String(255)),
        sa.Column("Template_Applied__c", sa.String(255)),
        sa.Column("Routing_Policy_Version__c", sa.String(64)),
        sa.Column("Routing_Rule__c", sa.String(255)),
        sa.Column("SLA_Minutes", sa.Float),
        sa.Column("first_response_rank", sa.Integer),
        sa.Column("first_response_record_id", ID),
        sa.Column("template_applied_at", UTCDateTime),
        sa.Column("template_applied_record_id", ID),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_lead_facts_created", "lead_facts", ["CreatedDate"])
    op.create_table(
        "response_candidates",
        sa.Column("record_id", ID, primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("user_id", ID),
    )
    op.create_index("ix_response_candidates_lead", "response_candidates", ["lead_id"])
    op.create_table(
        "routing_decisions",
        sa.Column("lead_id", ID, primary_key=True),
        sa.Column("decision", sa.JSON, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
    )
    op.create_table(
        "pool_state",
        sa.Column("pool_id", sa.String(128), primary_key=True),
        sa.Column("pointer", sa.Integer, nullable=False),
        sa.Column("day", sa.String(10)),
        sa.Column("assigned_today", sa.JSON, nullable=False),
        sa.Column("state", sa.JSON),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "template_recommendations",
        sa.Column("lead_id", ID, primary_key=True),
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
        sa.Column("detail", sa.JSON),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("workload", sa.String(32), nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
        sa.Column("policy_version", sa.String(64)),
        sa.Column("rule_id", sa.String(255)),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("replay_ids", sa.JSON, nullable=False),
    )
    op.create_index("ix_decisions_time", "decisions", ["decided_at", "workload"])
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


def downgrade() -> None:
    for table in (
        "sf_outbox",
        "decisions",
        "template_recommendations",
        "pool_state",
        "routing_decisions",
        "response_candidates",
        "lead_facts",
        "records",
    ):
        op.drop_table(table)
