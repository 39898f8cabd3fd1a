"""REST re-sync against the sandbox org's REST server (HTTP on loopback) and a real ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from kpi_pipeline.app.resync import (
    RESYNC_ORIGIN,
    EntityFields,
    ResyncError,
    ResyncSource,
    events_for_record,
    plan_window,
    resync_window,
    run_key_for,
    windows_due,
)
from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.core.workloads.records import merge_event
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, INTEGRATION_USER_ID, REP_USER_IDS
from kpi_pipeline_tests.support.resync_pipeline import (
    MINUTE,
    T0,
    Pipeline,
    create_lead,
    facts,
    gap_window,
    ledger_snapshot,
    refused_window,
)

REP, OTHER_REP = REP_USER_IDS[0], REP_USER_IDS[1]
SMB_POOL_PREFIX = "0050000000000"  # TEST_POLICY's pool members (005000000000015AAA...)


# --- gap events ----------------------------------------------------------------------


@pytest.mark.parametrize("ledger_kind", ["sqlite", "postgres"])
def test_gap_update_re_reads_the_lead_and_closes_the_window(
    open_pipeline: Callable[[str], Pipeline], ledger_kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if ledger_kind == "postgres" else ""
    pipeline = open_pipeline(url)
    lead = create_lead(pipeline, T0)
    pipeline.deliver()
    routed_to = facts(pipeline, lead).OwnerId
    assert routed_to.startswith(SMB_POOL_PREFIX)  # routed by the policy at creation

    # Later (now, after our routing decision), someone reassigns the lead out of band:
    # no CDC body, just a gap event.
    pipeline.org.store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP, "Status": "Working"}
    )
    modified_ms = pipeline.org.store.get_record("Lead", lead)["LastModifiedDate"]
    pipeline.deliver()
    [window] = pipeline.ledger.open_resync_windows()
    assert (window.reason, window.detail["record_ids"]) == ("gap", [lead])
    assert pipeline.ledger.record("Lead", lead).fields["OwnerId"] == INBOUND_QUEUE.id

    [report] = pipeline.resync()
    # The re-read, and REP's hand-over from LeadHistory (an owner-only UPDATE at its time).
    assert (report.status, report.records_read, report.events_applied) == ("closed", 1, 2)
    state = pipeline.ledger.record("Lead", lead)
    assert (state.fields["OwnerId"], state.fields["Status"]) == (REP, "Working")
    assert state.version_of("OwnerId") == (modified_ms, 0, 0)  # LastModifiedDate
    assert facts(pipeline, lead).OwnerId == REP  # reassigned after our routing decision
    assert not pipeline.ledger.open_resync_windows()
    [closed] = pipeline.ledger.resync_windows(status="closed")
    assert closed.detail["resync"]["records_read"] == 1
    assert closed.detail["record_ids"] == [lead]  # the processor's detail is kept

    # Re-running changes nothing and asks the org nothing.
    before, queries = ledger_snapshot(pipeline), len(pipeline.queries())
    assert pipeline.resync() == []
    assert (
        resync_window(
            pipeline.windows, pipeline.org.rest(), pipeline.processor, closed, now=datetime.now(UTC)
        ).status
        == "skipped"
    )
    assert (ledger_snapshot(pipeline), len(pipeline.queries())) == (before, queries)


def test_gap_ids_are_read_in_chunks_of_200(pipeline: Pipeline) -> None:
    store = pipeline.org.store
    with store.transaction(at_ms=T0) as tx:
        leads = [
            store.create_record(
                "Lead",
                {"LastName": f"L{i}", "Company": "C", "OwnerId": REP},
                user_id=INTEGRATION_USER_ID,
                transaction=tx,
            )
            for i in range(201)
        ]
    store.emit_gap("Lead", leads, "GAP_CREATE", at_ms=T0 + MINUTE)
    pipeline.skip_delivery()  # the CREATE events were lost; only the gap event arrives
    store.emit_gap("Lead", leads, "GAP_CREATE", at_ms=T0 + 2 * MINUTE)
    pipeline.deliver()
    [report] = pipeline.resync()
    assert (report.status, report.records_read) == ("closed", 201)
    # 200 + 1 ids: two record queries, then two LeadHistory queries for the owner changes.
    assert len(pipeline.queries()) == 4
    frame = pipeline.ledger.lead_facts_frame()
    assert set(frame["Id"]) == set(leads) and set(frame["OwnerId"]) == {REP}


def test_gap_delete_applies_the_deletion(pipeline: Pipeline) -> None:
    kept, removed = create_lead(pipeline, T0), create_lead(pipeline, T0 + 1000)
    pipeline.deliver()
    pipeline.org.store.emit_gap("Lead", [kept, removed], "GAP_DELETE", at_ms=T0 + MINUTE)
    pipeline.deliver()
    # Before the re-sync runs, one of them comes back from the recycle bin.
    pipeline.org.store.undelete_record(
        "Lead", kept, user_id=INTEGRATION_USER_ID, at_ms=T0 + 2 * MINUTE
    )
    [report] = pipeline.resync()
    assert (report.status, report.records_read, report.deleted) == ("closed", 1, 1)
    removed_state = pipeline.ledger.record("Lead", removed)
    assert removed_state.deleted and removed_state.fields["Company"] == "Small Co"
    assert not pipeline.ledger.record("Lead", kept).deleted


# --- time windows --------------------------------------------------------------------


def test_overflow_re_reads_the_entity_modified_since_the_overflow(pipeline: Pipeline) -> None:
    old = create_lead(pipeline, T0)
    pipeline.deliver()
    store = pipeline.org.store
    at = T0 + 10 * MINUTE
    with store.transaction(at_ms=at) as tx:
        lost = [
            store.create_record(
                "Lead",
                {"LastName": f"Bulk {i}", "Company": "Bulk Co", "OwnerId": INBOUND_QUEUE.id},
                user_id=INTEGRATION_USER_ID,
                transaction=tx,
            )
            for i in range(3)
        ]
    pipeline.skip_delivery()  # more changes than CDC carries: only the overflow arrives
    store.emit_overflow("Lead", at_ms=at)
    pipeline.deliver()
    [window] = pipeline.ledger.open_resync_windows()
    assert window.reason == "gap_overflow"

    [report] = pipeline.resync()
    assert (report.status, report.entities, report.records_read) == ("closed", ["Lead"], 3)
    assert report.routed == 3
    frame = pipeline.ledger.lead_facts_frame().set_index("Id")
    assert set(frame.index) == {old, *lost}
    assert all(frame.loc[lost, "OwnerId"].str.startswith(SMB_POOL_PREFIX))
    assert all(frame.loc[lost, "CreatedDate"] == pd.Timestamp(at, unit="ms", tz="UTC"))


def test_refused_replay_id_window_re_reads_leads_and_their_responses(pipeline: Pipeline) -> None:
    store = pipeline.org.store
    before = create_lead(pipeline, T0)
    pipeline.deliver()
    start = T0 + 5 * MINUTE
    taken = create_lead(pipeline, start + MINUTE)
    store.update_record("Lead", taken, {"OwnerId": REP}, user_id=REP, at_ms=start + 3 * MINUTE)
    routed = create_lead(pipeline, start + 2 * MINUTE)
    store.create_record(
        "Task",
        {
            "WhoId": routed,
            "Subject": "Call",
            "Status": "Completed",
            "IsClosed": True,
            "CompletedDateTime": start + 6 * MINUTE,
            "OwnerId": OTHER_REP,
        },
        user_id=OTHER_REP,
        at_ms=start + 6 * MINUTE,
    )
    pipeline.skip_delivery()
    # As ingest records it: from the last commit seen to wherever the stream restarted.
    channel = "/data/SalesKpis__chn"
    refused_window(
        pipeline.ledger,
        channel,
        from_replay=7,
        from_time_ms=start,
        detail={"error": "replay id refused"},
    )

    [report] = pipeline.resync()
    assert report.status == "closed", report.error
    assert report.entities == ["Lead", "Task", "EmailMessage"]
    assert report.records_read == 3 and (report.routed, report.first_responses) == (1, 1)
    frame = pipeline.ledger.lead_facts_frame().set_index("Id")
    assert set(frame.index) == {before, taken, routed}

    row = frame.loc[routed]
    assert row.OwnerId.startswith(SMB_POOL_PREFIX)
    assert (row.First_Response_Source__c, row.First_Response_User__c) == ("Task", OTHER_REP)
    assert row.Time_to_First_Response__c == 4.0

    # Taken by a rep before the re-sync saw it: not routed; created and assigned when the org says.
    row = frame.loc[taken]
    assert (row.OwnerId, row.Routing_Rule__c) == (REP, None)
    assert row.CreatedDate == pd.Timestamp(start + MINUTE, unit="ms", tz="UTC")
    assert row.Owner_Assigned_At__c == pd.Timestamp(start + 3 * MINUTE, unit="ms", tz="UTC")


def test_re_applying_a_re_read_changes_nothing(pipeline: Pipeline) -> None:
    """A window re-read twice (a run that applied, then died before closing; or overlapping
    windows) leaves the ledger as one re-read does."""
    store = pipeline.org.store
    lead = create_lead(pipeline, T0 + MINUTE)
    store.update_record("Lead", lead, {"Status": "Working"}, user_id=REP, at_ms=T0 + 2 * MINUTE)
    store.create_record(
        "Task",
        {"WhoId": lead, "Status": "Completed", "IsClosed": True, "OwnerId": REP},
        user_id=REP,
        at_ms=T0 + 4 * MINUTE,
    )
    pipeline.skip_delivery()
    first_id, second_id = (
        refused_window(pipeline.ledger, "/data/ChangeEvents", from_replay=replay, from_time_ms=T0)
        for replay in (1, 2)
    )
    [first] = pipeline.resync(window_ids=[first_id])
    assert (first.status, first.records_read, first.routed, first.first_responses) == (
        "closed",
        2,
        1,
        1,
    )
    snapshot = ledger_snapshot(pipeline)
    [second] = pipeline.resync()
    assert (second.window_id, second.status, second.records_read) == (second_id, "closed", 2)
    assert (second.routed, second.first_responses) == (0, 0)
    assert ledger_snapshot(pipeline) == snapshot


# --- merge semantics -----------------------------------------------------------------


def test_a_re_read_never_overrides_a_newer_cdc_value(pipeline: Pipeline) -> None:
    lead = create_lead(pipeline, T0)
    pipeline.deliver()
    pipeline.org.store.emit_gap(
        "Lead",
        [lead],
        "GAP_UPDATE",
        values={"OwnerId": REP, "Status": "Working"},
        at_ms=T0 + 10 * MINUTE,
    )
    pipeline.deliver()
    # A later change's CDC event reached the ledger before the re-sync applied its read
    # (the REST read was served before that change committed).
    newer = ChangeEvent(
        "/data/LeadChangeEvent",
        replay_id_from_int(10_000),
        ChangeEventHeader(
            "Lead",
            (lead,),
            "UPDATE",
            commit_timestamp=T0 + 20 * MINUTE,
            commit_number=99,
            sequence_number=1,
            commit_user=OTHER_REP,
        ),
        {"Status": "Qualified"},
    )
    pipeline.processor.process([newer])
    [report] = pipeline.resync()
    assert report.status == "closed"
    state = pipeline.ledger.record("Lead", lead)
    assert state.fields["Status"] == "Qualified"  # newer CDC value kept
    assert state.fields["OwnerId"] == REP  # older in the ledger than the re-read: taken


def test_re_read_events_lose_exact_ties_and_are_not_echoes(pipeline: Pipeline) -> None:
    lead = create_lead(pipeline, T0)
    [window_id] = [gap_window(pipeline.ledger, lead, from_replay=3, at_ms=T0)]
    [window] = pipeline.ledger.open_resync_windows()
    row = pipeline.org.rest().query_by_ids(
        "Lead", ["Status", "LastModifiedDate", "CreatedDate"], [lead]
    )[0]
    spec = EntityFields.from_describe(pipeline.org.rest().describe("Lead"))
    [reread] = events_for_record(ResyncSource(window), "Lead", row, None, spec)
    assert reread.header.change_origin == f"{RESYNC_ORIGIN};window={window_id}"
    assert not pipeline.processor.is_echo(reread)
    same_ms = ChangeEvent(
        "/data/LeadChangeEvent",
        replay_id_from_int(4),
        ChangeEventHeader(
            "Lead", (lead,), "UPDATE", commit_timestamp=T0, commit_number=1, sequence_number=1
        ),
        {"Status": "Closed"},
    )
    for order in ([reread, same_ms], [same_ms, reread]):
        state = None
        for event in order:
            state = merge_event(state, event, lead)
        assert state.fields["Status"] == "Closed"


# --- failures and scheduling ---------------------------------------------------------


def test_a_rest_failure_leaves_the_window_open_with_the_error(pipeline: Pipeline) -> None:
    lead = create_lead(pipeline, T0)
    pipeline.deliver()
    pipeline.org.store.emit_gap(
        "Lead", [lead], "GAP_UPDATE", values={"OwnerId": REP}, at_ms=T0 + MINUTE
    )
    pipeline.deliver()
    before = pipeline.ledger.record("Lead", lead)
    pipeline.org.server.faults.fail_next_requests(100)
    now = datetime.now(UTC)
    [report] = pipeline.resync(now)
    assert report.status == "failed" and "HTTP 500" in report.error
    [window] = pipeline.ledger.open_resync_windows()
    assert "HTTP 500" in window.detail["resync_error"]
    assert window.detail["resync_attempts"] == 1
    assert window.detail["record_ids"] == [lead]
    assert pipeline.ledger.record("Lead", lead) == before

    # Backing off: not due at once, due after a minute; the attempt changes the run key.
    assert windows_due([window], now) == []
    assert windows_due([window], now + timedelta(minutes=2)) == [window]
    assert run_key_for([window]) == f"resync:{window.id}.1"

    pipeline.org.server.faults.fail_next_requests(0)
    [report] = pipeline.resync(now + timedelta(minutes=2))
    assert report.status == "closed"
    [closed] = pipeline.ledger.resync_windows(status="closed")
    assert closed.detail["resync_error"] is None and closed.detail["resync_attempts"] == 1
    assert pipeline.ledger.record("Lead", lead).fields["OwnerId"] == REP


def test_a_window_the_resync_cannot_read_says_why(pipeline: Pipeline) -> None:
    pipeline.ledger.record_resync_window(
        ResyncGap(
            channel="/data/Unknown",
            reason="replay_id_invalid",
            from_replay=None,
            from_time_ms=T0,
            to_time_ms=None,
        )
    )
    [report] = pipeline.resync()
    assert report.status == "failed"
    assert "cannot tell which entities channel '/data/Unknown' carries" in report.error
    [window] = pipeline.ledger.open_resync_windows()
    with pytest.raises(ResyncError, match="reason 'mystery'"):
        plan_window(replace(window, reason="mystery"), datetime.now(UTC), lambda _c: ("Lead",))
    with pytest.raises(ResyncError, match="names no entity or record ids"):
        plan_window(replace(window, reason="gap", detail={}), datetime.now(UTC), lambda _c: ())
