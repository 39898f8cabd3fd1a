"""Migration 0005 on a ledger with value-snapshot outbox rows: unsent ones become dirty fields,
sent ones become what Salesforce confirmed."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger, migrations
from kpi_pipeline.adapters.ledger.store import create_ledger_engine

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
LEAD_A, LEAD_B = "00Q000000000001AAA", "00Q000000000002AAA"


def test_upgrading_a_0004_outbox_keeps_what_is_unsent_and_what_was_confirmed(
    ledger_url: str,
) -> None:
    engine = create_ledger_engine(ledger_url)
    assert migrations.upgrade(engine, "0004") == "0004"
    old = sa.table(
        "sf_outbox",
        sa.column("sobject"),
        sa.column("record_id"),
        sa.column("fields", sa.JSON),
        sa.column("fields_hash"),
        sa.column("status"),
        sa.column("attempts"),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("sent_at", sa.DateTime(timezone=True)),
    )
    rows = [
        (LEAD_A, {"Routing_Rule__c": "smb-default", "OwnerId": "005000000000015AAA"}, "sent"),
        (LEAD_A, {"Template_Recommended__c": "t1"}, "claimed"),
        (LEAD_B, {"Template_Applied__c": "t2"}, "pending"),
    ]
    with engine.begin() as conn:
        conn.execute(
            old.insert(),
            [
                {
                    "sobject": "Lead",
                    "record_id": record_id,
                    "fields": fields,
                    "fields_hash": f"h{i}",
                    "status": status,
                    "attempts": 1,
                    "created_at": NOW,
                    "sent_at": NOW if status == "sent" else None,
                }
                for i, (record_id, fields, status) in enumerate(rows)
            ],
        )
    engine.dispose()

    ledger = Ledger.from_url(ledger_url)  # upgrades to head
    try:
        by_record = {row.record_id: row for row in ledger.outbox()}
        a, b = by_record[LEAD_A], by_record[LEAD_B]
        assert (a.status, a.dirty) == ("pending", ["Template_Recommended__c"])
        assert a.confirmed == {"OwnerId": "005000000000015AAA", "Routing_Rule__c": "smb-default"}
        assert (b.status, b.dirty, b.confirmed) == ("pending", ["Template_Applied__c"], {})
        assert {c.record_id for c in ledger.claim_dirty(10)} == {LEAD_A, LEAD_B}
    finally:
        ledger.dispose()
