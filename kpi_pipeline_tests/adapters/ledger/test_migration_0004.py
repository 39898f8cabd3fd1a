"""Migration 0004 on a ledger that already holds data: stored emails get their links."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import migrations
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline_tests.support.old_ledgers import upgraded_from

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


def _email(email_id: str, **fields: object) -> RecordState:
    return RecordState(sobject="EmailMessage", record_id=email_id, fields=dict(fields))


def test_upgrading_a_0003_ledger_links_the_emails_it_holds(ledger_url: str) -> None:
    columns = [
        sa.column("sobject"),
        sa.column("id"),
        sa.column("state", sa.JSON),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    ]
    stored = [
        _email("02s000000000001AAA", ActivityId="00T000000000001AAA"),
        _email("02s000000000002AAA", RelatedToId="00Q000000000001AAA"),  # no activity
        RecordState(sobject="Task", record_id="00T000000000001AAA", fields={"WhoId": "00Q1"}),
    ]
    rows = [
        {"sobject": s.sobject, "id": s.record_id, "state": s.to_json(), "updated_at": NOW}
        for s in stored
    ]
    with upgraded_from(ledger_url, "0003", "records", columns, rows) as ledger:
        assert migrations.current_revision(ledger.engine) == migrations.head_revision()
        with ledger.read() as conn:
            assert ledger.emails_linked_to(conn, ["00T000000000001AAA", "00Q000000000001AAA"]) == {
                "02s000000000001AAA": "00T000000000001AAA"
            }
