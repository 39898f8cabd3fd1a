"""Properties every rollup keeps on arbitrary ledgers (hypothesis): counts add up, ratios stay
in range, percentiles are ordered, and reconcile finds nothing to complain about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core.kpis import compute_all, lead_facts_columns, reconcile
from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS, NUMBER_COLUMNS

START = datetime(2026, 3, 1, tzinfo=UTC)
MAYBE_MINUTES = st.one_of(st.none(), st.floats(0, 5000, allow_nan=False).map(lambda m: round(m, 2)))


@st.composite
def leads(draw: st.DrawFn) -> dict[str, object]:
    created = START + timedelta(minutes=draw(st.integers(0, 4 * 1440)))
    ttfr = draw(MAYBE_MINUTES)
    latency = draw(MAYBE_MINUTES)
    recommended = draw(st.sampled_from([None, "t1", "t2"]))
    return {
        "CreatedDate": created,
        "OwnerId": draw(st.sampled_from([None, "005A", "005B", "00GQ"])),
        "Owner_Assigned_At__c": None if latency is None else created + timedelta(minutes=latency),
        "Assignment_Latency_Minutes__c": np.nan if latency is None else latency,
        "First_Response_At__c": None if ttfr is None else created + timedelta(minutes=ttfr),
        "First_Response_User__c": None if ttfr is None else "005A",
        "First_Response_Source__c": None if ttfr is None else "Task",
        "Time_to_First_Response__c": np.nan if ttfr is None else ttfr,
        "Template_Recommended__c": recommended,
        "Template_Applied__c": draw(st.sampled_from([None, "t1", "t2"])),
        "Routing_Policy_Version__c": draw(st.sampled_from([None, "v1", "v2"])),
        "Routing_Rule__c": draw(st.sampled_from([None, "a", "b"])),
        "SLA_Minutes": draw(st.sampled_from([np.nan, 15.0, 60.0, 240.0])),
    }


def as_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in lead_facts_columns() if c != "Id"])
    frame.insert(0, "Id", [f"00Q{i:05d}" for i in range(len(rows))])
    for column in DATETIME_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in NUMBER_COLUMNS:
        frame[column] = frame[column].astype("float64")
    return frame[list(lead_facts_columns())]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(leads(), min_size=1, max_size=40),
    as_of_minutes=st.integers(0, 6 * 1440),
    tz=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
)
def test_rollups_add_up_for_any_ledger(
    rows: list[dict[str, object]], as_of_minutes: int, tz: str
) -> None:
    frame = as_frame(rows)
    rollups = compute_all(frame, as_of=START + timedelta(minutes=as_of_minutes), tz=tz)
    overall, sla = rollups["ttfr_overall"], rollups["sla"]

    assert overall["leads"].sum() == len(frame)
    assert overall["responded"].sum() == frame["First_Response_At__c"].notna().sum()
    assert (sla["met"] + sla["breached"] + sla["pending"]).tolist() == overall["leads"].tolist()
    assert sla["breach_pct"].dropna().between(0, 100).all()
    for name in ("ttfr_overall", "ttfr_by_owner"):
        table = rollups[name]
        assert table["coverage"].between(0, 1).all()
        answered = table[table["responded"] > 0]
        assert (answered["ttfr_p50"] <= answered["ttfr_p90"]).all()
        assert (answered["ttfr_p90"] <= answered["ttfr_p95"]).all()
        assert table.loc[table["responded"] == 0, "ttfr_p50"].isna().all()
    usage = rollups["template_usage"]
    assert (usage["applied"] <= usage["recommended"]).all()
    assert usage["acceptance"].between(0, 1).all()
    assert reconcile(frame, rollups, tz=tz) == []
