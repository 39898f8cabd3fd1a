"""Re-sync and the assignment through a later owner change: a partner lead routed to a
queue is handed to a rep by a change CDC only announced as a gap. The re-read record
carries its owner at version ``LastModifiedDate`` (the REST read has no owner history),
so the re-sync recovers the assignment exactly when that change was the lead's last
modification, and as ``LastModifiedDate`` (later than the real hand-over) when the lead
was modified again before the re-read."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline.sandbox.store import REP_USER_IDS
from kpi_pipeline_tests.support.resync_pipeline import MINUTE, T0, Pipeline, create_lead, facts

REP = REP_USER_IDS[0]
PARTNER_QUEUE = "00G000000000009AAA"  # TEST_POLICY's "partners" rule target


def routed_partner_lead(pipeline: Pipeline) -> str:
    lead = create_lead(pipeline, T0, LeadSource="Partner")
    pipeline.deliver()
    row = facts(pipeline, lead)
    assert (row.OwnerId, row.Routing_Rule__c) == (PARTNER_QUEUE, "partners")
    assert pd.isna(row.Owner_Assigned_At__c)
    return lead


def test_resync_recovers_an_owner_change_that_came_as_a_gap(pipeline: Pipeline) -> None:
    lead = routed_partner_lead(pipeline)
    pipeline.org.store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP}, at_ms=T0 + 20 * MINUTE
    )
    pipeline.deliver()
    assert pd.isna(facts(pipeline, lead).Owner_Assigned_At__c)  # a gap event has no body

    [report] = pipeline.resync()
    assert report.status == "closed", report.error
    row = facts(pipeline, lead)
    assert row.Owner_Assigned_At__c == pd.Timestamp(T0 + 20 * MINUTE, unit="ms", tz="UTC")
    assert row.Assignment_Latency_Minutes__c == 20.0
    (outbox,) = pipeline.ledger.outbox(record_id=lead)
    assert {"Owner_Assigned_At__c", "Assignment_Latency_Minutes__c"} <= set(outbox.dirty)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="re-sync reads no owner history: a re-read owner is versioned at LastModifiedDate, "
    "so a lead modified after the hand-over is assigned at its last modification",
)
def test_resync_of_a_lead_modified_after_the_owner_change(pipeline: Pipeline) -> None:
    lead = routed_partner_lead(pipeline)
    store = pipeline.org.store
    store.emit_gap("Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP}, at_ms=T0 + 20 * MINUTE)
    store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"Status": "Working"}, at_ms=T0 + 30 * MINUTE
    )
    pipeline.deliver()
    reports = pipeline.resync()  # one window per gap event
    assert [r.status for r in reports] == ["closed", "closed"], [r.error for r in reports]
    assigned = facts(pipeline, lead).Owner_Assigned_At__c
    # Today: the last modification (T0 + 30), pinned so the xfail cannot hide another failure.
    late = pd.Timestamp(T0 + 30 * MINUTE, unit="ms", tz="UTC")
    if assigned != late:
        pytest.fail(f"expected the known limitation (assigned {late}), got {assigned}")
    assert assigned == pd.Timestamp(T0 + 20 * MINUTE, unit="ms", tz="UTC")
