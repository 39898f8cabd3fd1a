"""Business-hours clocks in the lead facts: the SLA's calendar and due time, and TTFR in
business minutes (``Time_to_First_Response_Business_Minutes__c``).

Leads measured before this migration were measured on 24x7 time (policies had no
calendars), so their business minutes are their wall-clock minutes; their due time stays
NULL, which the KPI rollups read as created + SLA minutes, the same instant.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kpi_pipeline.adapters.ledger.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BUSINESS = "Time_to_First_Response_Business_Minutes__c"


def upgrade() -> None:
    with op.batch_alter_table("lead_facts") as batch:
        batch.add_column(sa.Column(BUSINESS, sa.Float))
        batch.add_column(sa.Column("SLA_Calendar", sa.String(64)))
        batch.add_column(sa.Column("SLA_Due_At", UTCDateTime))
    facts = sa.table(
        "lead_facts", sa.column(BUSINESS, sa.Float), sa.column("Time_to_First_Response__c")
    )
    op.execute(facts.update().values({BUSINESS: facts.c.Time_to_First_Response__c}))


def downgrade() -> None:
    with op.batch_alter_table("lead_facts") as batch:
        batch.drop_column("SLA_Due_At")
        batch.drop_column("SLA_Calendar")
        batch.drop_column(BUSINESS)
