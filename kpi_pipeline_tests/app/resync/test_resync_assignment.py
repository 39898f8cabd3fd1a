"""Re-sync and the assignment through a later owner change: a partner lead routed to a
queue is handed to a rep by a change CDC only announced as a gap. The re-sync dates the
hand-over from the org's LeadHistory (the sandbox records owner changes as an org with
field history tracking on does), so the assignment is exact even when the lead was modified
again before the re-read; without history it falls back to ``LastModifiedDate``, says so in
a log line and counts ``errors_total{area="resync_owner_history"}``."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger import schema as ledger_tables
from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, REP_USER_IDS
from kpi_pipeline.telemetry import metrics
from kpi_pipeline_tests.support.resync_pipeline import (
    MINUTE,
    T0,
    Pipeline,
    create_lead,
    facts,
    ledger_snapshot,
)

REP, OTHER_REP = REP_USER_IDS[0], REP_USER_IDS[1]
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


def test_resync_of_a_lead_modified_after_the_owner_change(pipeline: Pipeline) -> None:
    lead = handed_over_then_modified(pipeline)
    reports = pipeline.resync()  # one window per gap event
    assert [r.status for r in reports] == ["closed", "closed"], [r.error for r in reports]
    row = facts(pipeline, lead)
    assert row.Owner_Assigned_At__c == at(20)  # LeadHistory's time, not LastModifiedDate's
    assert row.Assignment_Latency_Minutes__c == 20.0
    assert row.OwnerId == REP


# --- owner history: present, missing, two-row form, re-runs, ledgers ------------------------


def at(minutes: int) -> pd.Timestamp:
    return pd.Timestamp(T0 + minutes * MINUTE, unit="ms", tz="UTC")


def handed_over_then_modified(pipeline: Pipeline) -> str:
    """Partner lead, given to REP at +20 and modified again at +30, both only as gaps."""
    lead = routed_partner_lead(pipeline)
    store = pipeline.org.store
    store.emit_gap("Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP}, at_ms=T0 + 20 * MINUTE)
    store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"Status": "Working"}, at_ms=T0 + 30 * MINUTE
    )
    pipeline.deliver()
    return lead


def fallbacks() -> float:
    return metrics.sample_value("errors_total", {"area": "resync_owner_history"})


def test_owner_history_dates_the_assignment_on_both_ledgers(
    pipeline_on_each_ledger: Pipeline,
) -> None:
    pipeline = pipeline_on_each_ledger
    lead = handed_over_then_modified(pipeline)
    before = fallbacks()
    assert all(r.status == "closed" for r in pipeline.resync())
    row = facts(pipeline, lead)
    assert (row.Owner_Assigned_At__c, row.Assignment_Latency_Minutes__c) == (at(20), 20.0)
    assert fallbacks() == before  # history was there: no fallback


def test_the_queue_to_user_change_comes_as_two_rows_and_the_id_row_is_used(
    pipeline: Pipeline,
) -> None:
    lead = handed_over_then_modified(pipeline)
    rows = pipeline.org.rest().field_history("Lead", "Owner", [lead])
    # What a real org answers for a queue -> user change: one row with ids, one with names.
    assert [(r["OldValue"], r["NewValue"]) for r in rows] == [
        (INBOUND_QUEUE.id, REP),
        (INBOUND_QUEUE.name, "Ava Thompson"),
    ]
    assert {r["CreatedDate"] for r in rows} == {_sf(T0 + 20 * MINUTE)}
    assert {r["LeadId"] for r in rows} == {lead}
    pipeline.resync()
    assert facts(pipeline, lead).Owner_Assigned_At__c == at(20)


def _sf(ms: int) -> str:
    return format_sf_datetime(parse_sf_datetime(ms))


@pytest.mark.parametrize("missing", ["tracking_off", "invalid_type"])
def test_without_history_the_re_sync_falls_back_and_says_so(
    pipeline_on_each_ledger: Pipeline,
    missing: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = pipeline_on_each_ledger
    if missing == "tracking_off":
        pipeline.org.store.track_owner_history = False  # the query answers no row
    else:
        pipeline.org.server.app.field_history = False  # the query fails: INVALID_TYPE
    lead = handed_over_then_modified(pipeline)
    before = fallbacks()
    with caplog.at_level(logging.WARNING, logger="kpi_pipeline.app.resync"):
        reports = pipeline.resync()
    assert [r.status for r in reports] == ["closed", "closed"], [r.error for r in reports]
    # Today's behaviour: the owner is dated at the lead's last modification.
    assert facts(pipeline, lead).Owner_Assigned_At__c == at(30)
    assert fallbacks() > before
    [message] = {r.getMessage() for r in caplog.records if "no owner history" in r.message}
    assert "LastModifiedDate" in message
    assert ("INVALID_TYPE" in message) == (missing == "invalid_type")


def test_re_running_the_re_sync_is_idempotent(
    pipeline_on_each_ledger: Pipeline,
) -> None:
    pipeline = pipeline_on_each_ledger
    lead = handed_over_then_modified(pipeline)
    windows = [w.id for w in pipeline.ledger.open_resync_windows()]
    pipeline.resync()
    first = ledger_snapshot(pipeline)
    outbox = [(r.record_id, sorted(r.dirty)) for r in pipeline.ledger.outbox(record_id=lead)]
    # The same windows again (a retried run that re-reads what an earlier one applied).
    _reopen(pipeline, windows)
    assert all(r.status == "closed" for r in pipeline.resync())
    assert ledger_snapshot(pipeline) == first
    assert [
        (r.record_id, sorted(r.dirty)) for r in pipeline.ledger.outbox(record_id=lead)
    ] == outbox
    assert facts(pipeline, lead).Owner_Assigned_At__c == at(20)


def _reopen(pipeline: Pipeline, window_ids: list[int]) -> None:
    """Open closed windows again: the ledger has no call for it (an operator never needs one)."""
    table = ledger_tables.resync_windows
    with pipeline.ledger.write() as conn:
        conn.execute(table.update().where(table.c.id.in_(window_ids)).values(status="open"))


def test_a_later_dated_hand_over_never_moves_the_assignment_later(
    pipeline_on_each_ledger: Pipeline,
) -> None:
    """REP at +20 (gap, re-synced), then OTHER_REP at +40 (another gap): the second re-sync
    reads both history rows and still leaves the assignment at +20; and a history row dated
    before what the ledger holds (+20 learned from CDC as +25 would be) moves it earlier."""
    pipeline = pipeline_on_each_ledger
    lead = handed_over_then_modified(pipeline)
    pipeline.resync()
    store = pipeline.org.store
    store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"OwnerId": OTHER_REP}, at_ms=T0 + 40 * MINUTE
    )
    pipeline.deliver()
    assert all(r.status == "closed" for r in pipeline.resync())
    row = facts(pipeline, lead)
    assert (row.OwnerId, row.Owner_Assigned_At__c) == (OTHER_REP, at(20))
    assert row.Assignment_Latency_Minutes__c == 20.0


def test_an_earlier_dated_hand_over_moves_the_assignment_earlier(
    pipeline_on_each_ledger: Pipeline,
) -> None:
    """The ledger learned of REP's ownership late (a CDC change at +35 by another rep's
    tool); the org's history says REP had it since +20: the re-sync moves it earlier."""
    pipeline = pipeline_on_each_ledger
    lead = routed_partner_lead(pipeline)
    store = pipeline.org.store
    store.emit_gap("Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP}, at_ms=T0 + 20 * MINUTE)
    pipeline.skip_delivery()  # the gap event itself never reached the pipeline
    store.update_record(
        "Lead",
        lead,
        {"Status": "Working", "OwnerId": OTHER_REP},
        user_id=REP,
        at_ms=T0 + 34 * MINUTE,
    )
    store.update_record("Lead", lead, {"OwnerId": REP}, user_id=REP, at_ms=T0 + 35 * MINUTE)
    pipeline.deliver()
    assert facts(pipeline, lead).Owner_Assigned_At__c == at(34)  # what CDC showed
    store.emit_gap("Lead", [lead], "GAP_UPDATE", at_ms=T0 + 36 * MINUTE)
    pipeline.deliver()
    assert all(r.status == "closed" for r in pipeline.resync())
    assert facts(pipeline, lead).Owner_Assigned_At__c == at(20)
