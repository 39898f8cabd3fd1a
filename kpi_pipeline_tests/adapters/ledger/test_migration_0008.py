"""Migration 0008 on a ledger with lead facts measured before calendars: their business
minutes are their wall-clock minutes (24x7), their due time stays empty and the rollups
read it as created + SLA minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from kpi_pipeline.core.kpis import compute_all
from kpi_pipeline_tests.support.old_ledgers import naive_times, upgraded_from

CREATED = datetime(2026, 11, 20, 21, 30, tzinfo=UTC)  # a Friday evening in New York


def test_upgrading_0007_lead_facts_keeps_them_on_24x7_time(ledger_url: str) -> None:
    columns = [
        sa.column("Id"),
        sa.column("CreatedDate", sa.DateTime(timezone=True)),
        sa.column("First_Response_At__c", sa.DateTime(timezone=True)),
        sa.column("First_Response_User__c"),
        sa.column("First_Response_Source__c"),
        sa.column("Time_to_First_Response__c"),
        sa.column("SLA_Minutes"),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    ]
    naive = naive_times(ledger_url)  # UTCDateTime stores naive UTC text on SQLite

    def stamp(at: datetime) -> datetime:
        return at.replace(tzinfo=None) if naive else at

    rows = [
        {
            "Id": "00Q000000000001AAA",
            "CreatedDate": stamp(CREATED),
            "First_Response_At__c": stamp(CREATED + timedelta(minutes=3930)),
            "First_Response_User__c": "005000000000030AAA",
            "First_Response_Source__c": "Task",
            "Time_to_First_Response__c": 3930.0,
            "SLA_Minutes": 60.0,
            "updated_at": stamp(CREATED),
        },
        {
            "Id": "00Q000000000002AAA",
            "CreatedDate": stamp(CREATED),
            "First_Response_At__c": None,
            "First_Response_User__c": None,
            "First_Response_Source__c": None,
            "Time_to_First_Response__c": None,
            "SLA_Minutes": 240.0,
            "updated_at": stamp(CREATED),
        },
    ]
    with upgraded_from(ledger_url, "0007", "lead_facts", columns, rows) as ledger:
        frame = ledger.lead_facts_frame().set_index("Id", drop=False)
        answered, open_ = frame.loc["00Q000000000001AAA"], frame.loc["00Q000000000002AAA"]
        assert answered["Time_to_First_Response_Business_Minutes__c"] == 3930.0
        assert (
            open_["Time_to_First_Response_Business_Minutes__c"]
            != open_["Time_to_First_Response_Business_Minutes__c"]
        )  # NaN: no response
        assert frame["SLA_Due_At"].isna().all() and frame["SLA_Calendar"].isna().all()
        # As of 3 hours after creation: lead 1 breached (answered late), lead 2's 240 minutes
        # on the wall clock are not over yet.
        rollups = compute_all(frame, as_of=CREATED + timedelta(hours=3))
        assert rollups["sla"][["met", "breached", "pending"]].values.tolist() == [[0, 1, 1]]
        assert rollups["ttfr_overall"]["ttfr_business_p50"].tolist() == [3930.0]
