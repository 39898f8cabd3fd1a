"""Lead-facts frames built by hand for the KPI rollup tests: the leads of
core/kpis/test_rollups.py (every expected value there is worked out from them), the row
builder ``lead`` and ``assert_table``, which compares a rollup with rows written by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from kpi_pipeline.core.kpis import (
    lead_facts_columns,
)
from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS, NUMBER_COLUMNS

AS_OF = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)


NAN = float("nan")


U1, U2, Q1 = "005U1", "005U2", "00GQ1"


DEMO, INTRO = "tmpl_demo", "tmpl_intro"


def ts(text: str | None) -> pd.Timestamp:
    return pd.NaT if text is None else pd.Timestamp(text, tz="UTC")


def lead(
    lead_id: str,
    created: str,
    owner: str | None,
    *,
    assigned: str | None = None,
    latency: float = NAN,
    version: str | None = None,
    rule: str | None = None,
    responded: str | None = None,
    ttfr: float = NAN,
    sla_minutes: float = NAN,
    recommended: str | None = None,
    applied: str | None = None,
) -> dict[str, object]:
    return {
        "Id": lead_id,
        "CreatedDate": ts(created),
        "OwnerId": owner,
        "Owner_Assigned_At__c": ts(assigned),
        "Assignment_Latency_Minutes__c": latency,
        "First_Response_At__c": ts(responded),
        "First_Response_User__c": owner if responded else None,
        "First_Response_Source__c": "EmailMessage" if responded else None,
        "Time_to_First_Response__c": ttfr,
        "Template_Recommended__c": recommended,
        "Template_Applied__c": applied,
        "Routing_Policy_Version__c": version,
        "Routing_Rule__c": rule,
        "SLA_Minutes": sla_minutes,
    }


def facts(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(lead_facts_columns()))
    for column in DATETIME_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in NUMBER_COLUMNS:
        frame[column] = frame[column].astype("float64")
    return frame


D1, D2 = "2026-03-02", "2026-03-03"


V1, V2 = "v1", "v2"


def hand_built_ledger() -> pd.DataFrame:
    """The leads listed in core/kpis/test_rollups.py's docstring (also loaded into real ledgers by
    adapters/ledger/test_lead_facts_frame.py)."""
    return facts(
        [
            lead("L1", f"{D1}T09:00Z", U1, assigned=f"{D1}T09:02Z", latency=2.0, version=V1,
                 rule="enterprise", responded=f"{D1}T09:10Z", ttfr=10.0, sla_minutes=60.0,
                 recommended=DEMO, applied=DEMO),
            lead("L2", f"{D1}T10:00Z", U1, assigned=f"{D1}T10:05Z", latency=5.0, version=V1,
                 rule="enterprise", responded=f"{D1}T11:00Z", ttfr=60.0, sla_minutes=60.0,
                 recommended=DEMO),
            lead("L3", f"{D1}T11:00Z", U2, assigned=f"{D1}T11:01Z", latency=1.0, version=V1,
                 rule="smb", responded=f"{D1}T11:45Z", ttfr=45.0, sla_minutes=30.0,
                 recommended=INTRO, applied=DEMO),
            lead("L4", f"{D1}T12:00Z", U2, assigned=f"{D1}T12:30Z", latency=30.0, version=V2,
                 rule="smb", sla_minutes=60.0, recommended=INTRO),
            lead("L5", f"{D1}T23:30Z", U1, assigned=f"{D1}T23:30Z", latency=0.0,
                 responded=f"{D2}T00:10Z", ttfr=40.0),
            lead("L6", f"{D2}T08:00Z", U1, assigned=f"{D2}T08:03Z", latency=3.0, version=V2,
                 rule="enterprise", responded=f"{D2}T08:20Z", ttfr=20.0, sla_minutes=15.0,
                 recommended=DEMO, applied=DEMO),
            lead("L7", f"{D2}T11:30Z", U2, assigned=f"{D2}T11:34Z", latency=4.0, version=V2,
                 rule="enterprise", sla_minutes=60.0, recommended=DEMO),
            lead("L8", f"{D2}T11:00Z", U2, assigned=f"{D2}T11:10Z", latency=10.0, version=V2,
                 rule="smb", sla_minutes=60.0, recommended=INTRO),
            lead("L9", f"{D2}T09:00Z", U2, assigned=f"{D2}T09:06Z", latency=6.0, version=V2,
                 rule="smb", responded=f"{D2}T09:15Z", ttfr=15.0, sla_minutes=240.0,
                 recommended=INTRO, applied=INTRO),
            lead("L10", f"{D2}T06:00Z", Q1, version=V2, rule="queue_fallback", sla_minutes=60.0),
            lead("L11", f"{D2}T10:00Z", U1, assigned=f"{D2}T10:02Z", version=V2,
                 rule="enterprise", responded=f"{D2}T10:30:20Z", sla_minutes=60.0,
                 recommended=DEMO, applied=INTRO),
        ]
    )  # fmt: skip


def expected(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for column in frame.columns:
        if frame[column].dtype.kind in "OT" or str(frame[column].dtype) == "str":
            frame[column] = frame[column].astype(object)
    return frame


def assert_table(actual: pd.DataFrame, rows: list[tuple]) -> None:
    want = expected(rows, list(actual.columns))
    want = want.astype(actual.dtypes.to_dict())
    pd.testing.assert_frame_equal(actual, want, check_exact=False, rtol=1e-12, atol=1e-9)
