"""Migration 0005 on a ledger with value-snapshot outbox rows: unsent ones become dirty fields,
sent ones become what Salesforce confirmed."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from kpi_pipeline_tests.support.old_ledgers import upgraded_from

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
LEAD_A, LEAD_B = "00Q000000000001AAA", "00Q000000000002AAA"


def test_upgrading_a_0004_outbox_keeps_what_is_unsent_and_what_was_confirmed(
    ledger_url: str,
) -> None:
    columns = [
        sa.column("sobject"),
        sa.column("record_id"),
        sa.column("fields", sa.JSON),
        sa.column("fields_hash"),
        sa.column("status"),
        sa.column("attempts"),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("sent_at", sa.DateTime(timezone=True)),
    ]
    outbox = [
        (LEAD_A, {"Routing_Rule__c": "smb-default", "OwnerId": "005000000000015AAA"}, "sent"),
        (LEAD_A, {"Template_Recommended__c": "t1"}, "claimed"),
        (LEAD_B, {"Template_Applied__c": "t2"}, "pending"),
    ]
    rows = [
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
        for i, (record_id, fields, status) in enumerate(outbox)
    ]
    with upgraded_from(ledger_url, "0004", "sf_outbox", columns, rows) as ledger:
        by_record = {row.record_id: row for row in ledger.outbox()}
        a, b = by_record[LEAD_A], by_record[LEAD_B]
        assert (a.status, a.dirty) == ("pending", ["Template_Recommended__c"])
        assert a.confirmed == {"OwnerId": "005000000000015AAA", "Routing_Rule__c": "smb-default"}
        assert (b.status, b.dirty, b.confirmed) == ("pending", ["Template_Applied__c"], {})
        assert {c.record_id for c in ledger.claim_dirty(10)} == {LEAD_A, LEAD_B}
