"""Workload state in the ledger on SQLite and PostgreSQL: the SQL guards, outbox, frames."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.kpis import lead_facts_columns, validate_lead_facts
from kpi_pipeline.ledger import Ledger
from kpi_pipeline.ledger.state import DecisionRow
from kpi_pipeline.workloads.first_touch import FirstResponse, ResponseCandidate
from kpi_pipeline.workloads.lead_route import PoolState

T = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
LEAD = "00Q000000000001AAA"


def fr(
    minutes: float, source: str = "Task", record_id: str = "00T000000000001AAA"
) -> FirstResponse:
    return FirstResponse(
        T + timedelta(minutes=minutes), "005000000000030AAA", source, record_id, minutes
    )


def stored_fr(ledger: Ledger) -> tuple[pd.Timestamp, str, str]:
    with ledger.read() as conn:
        row = ledger.lead_facts(conn, [LEAD])[LEAD]
    return row.First_Response_At__c, row.First_Response_Source__c, row.first_response_record_id


@pytest.fixture
def with_lead(ledger: Ledger) -> Ledger:
    with ledger.write() as conn:
        ledger.ensure_lead_facts(conn, LEAD, created=T, owner_id="005000000000030AAA")
    return ledger


def improve(ledger: Ledger, value: FirstResponse) -> bool:
    with ledger.write() as conn:
        return ledger.improve_first_response(conn, LEAD, value)


def test_ttfr_guard_only_an_earlier_candidate_replaces(with_lead: Ledger) -> None:
    ledger = with_lead
    assert improve(ledger, fr(30)) is True
    assert improve(ledger, fr(45, record_id="00T000000000002AAA")) is False  # later: never
    assert improve(ledger, fr(30)) is False  # the same: no change
    assert (
        improve(ledger, fr(30, source="EmailMessage", record_id="02s000000000009AAA")) is True
    )  # tie: email first
    assert (
        improve(ledger, fr(30, source="EmailMessage", record_id="02s000000000001AAA")) is True
    )  # tie: lower id
    assert (
        improve(ledger, fr(30, source="Task", record_id="00T000000000000AAA")) is False
    )  # task after email
    assert improve(ledger, fr(12)) is True  # earlier: always
    at, source, record_id = stored_fr(ledger)
    assert (at, source, record_id) == (T + timedelta(minutes=12), "Task", "00T000000000001AAA")
    frame = ledger.lead_facts_frame()
    assert frame.loc[0, "Time_to_First_Response__c"] == 12.0


def test_assignment_time_only_moves_earlier(with_lead: Ledger) -> None:
    ledger = with_lead
    with ledger.write() as conn:
        assert ledger.set_assignment(conn, LEAD, T + timedelta(minutes=5), 5.0)
        assert not ledger.set_assignment(conn, LEAD, T + timedelta(minutes=9), 9.0)
        assert ledger.set_assignment(conn, LEAD, T + timedelta(minutes=1), 1.0)
    assert ledger.lead_facts_frame().loc[0, "Assignment_Latency_Minutes__c"] == 1.0


def test_lead_facts_frame_matches_the_rollup_contract(with_lead: Ledger) -> None:
    ledger = with_lead
    improve(ledger, fr(30))
    with ledger.write() as conn:
        ledger.ensure_lead_facts(
            conn, "00Q000000000002AAA", created=T + timedelta(days=1), owner_id=None
        )
        ledger.ensure_lead_facts(
            conn, "00Q000000000003AAA", created=None, owner_id=None
        )  # unknown creation
    frame = ledger.lead_facts_frame()
    assert tuple(frame.columns) == lead_facts_columns()
    validate_lead_facts(frame)
    assert list(frame["Id"]) == [LEAD, "00Q000000000002AAA"]
    assert str(frame["CreatedDate"].dtype) == "datetime64[ns, UTC]"
    assert pd.isna(frame.loc[1, "First_Response_At__c"]) and pd.isna(frame.loc[1, "SLA_Minutes"])
    assert frame.loc[1, "OwnerId"] is None
    window = ledger.lead_facts_frame(T + timedelta(hours=1), T + timedelta(days=2))
    assert list(window["Id"]) == ["00Q000000000002AAA"]
    assert ledger.lead_facts_frame(T + timedelta(days=3)).empty


def test_outbox_enqueue_is_idempotent_and_claims_are_exclusive(ledger: Ledger) -> None:
    fields = {"OwnerId": "005000000000030AAA", "Routing_Rule__c": "smb-default"}
    with ledger.write() as conn:
        assert ledger.enqueue_update(conn, "Lead", LEAD, fields) is True
        assert ledger.enqueue_update(conn, "Lead", LEAD, dict(reversed(fields.items()))) is False
        assert ledger.enqueue_update(conn, "Lead", LEAD, {"Template_Recommended__c": "t1"}) is True
    claimed = ledger.claim_pending(10)
    assert [(i.record_id, i.fields) for i in claimed] == [
        (LEAD, fields),
        (LEAD, {"Template_Recommended__c": "t1"}),
    ]
    assert ledger.claim_pending(10) == []  # claimed items are not handed out twice
    ledger.mark_failed(claimed[0].id, "UNABLE_TO_LOCK_ROW", retryable=True)
    ledger.mark_failed(claimed[1].id, "INVALID_FIELD", retryable=False)
    (again,) = ledger.claim_pending(10)
    assert again.id == claimed[0].id
    ledger.mark_sent([again.id])
    rows = {row.id: row for row in ledger.outbox()}
    assert (rows[again.id].status, rows[again.id].attempts, rows[again.id].last_error) == (
        "sent",
        2,
        None,
    )
    assert (rows[claimed[1].id].status, rows[claimed[1].id].last_error) == (
        "failed",
        "INVALID_FIELD",
    )
    assert ledger.claim_pending(10) == []
    with pytest.raises(ValueError, match="at least 1"):
        ledger.claim_pending(0)


def test_a_claim_whose_lease_expired_is_handed_out_again(ledger_url: str) -> None:
    now = [T]
    ledger = Ledger.from_url(ledger_url, clock=lambda: now[0])
    with ledger.write() as conn:
        ledger.enqueue_update(conn, "Lead", LEAD, {"OwnerId": "005000000000030AAA"})
    (first,) = ledger.claim_pending(1)
    now[0] = T + timedelta(minutes=4)
    assert ledger.claim_pending(1) == []
    now[0] = T + timedelta(minutes=6)
    (second,) = ledger.claim_pending(1)
    assert second.id == first.id
    ledger.dispose()


def test_decisions_are_inserted_once_and_listed_in_time_order(ledger: Ledger) -> None:
    def row(decision_id: str, minutes: int, workload: str = "lead_route") -> DecisionRow:
        return DecisionRow(
            decision_id,
            workload,
            LEAD,
            T + timedelta(minutes=minutes),
            "v1",
            "r1",
            "routing-policy:v1",
            {"messages": [{"role": "user", "content": "x"}], "metadata": {"lead_id": LEAD}},
            {"owner_id": "005000000000030AAA"},
            ["0000000000000001"],
        )

    with ledger.write() as conn:
        assert ledger.insert_decision(conn, row("b", 5))
        assert ledger.insert_decision(conn, row("a", 5, "first_touch"))
        assert ledger.insert_decision(conn, row("c", 1))
        assert not ledger.insert_decision(conn, row("c", 1))
    assert [d.id for d in ledger.decisions_between()] == ["c", "a", "b"]
    assert [
        d.id for d in ledger.decisions_between(T + timedelta(minutes=2), T + timedelta(minutes=6))
    ] == ["a", "b"]
    assert ledger.decisions_between(workload="first_touch")[0].request["metadata"] == {
        "lead_id": LEAD
    }


def test_pool_state_round_trips_and_routing_decisions_are_memoized(ledger: Ledger) -> None:
    from kpi_pipeline.workloads.lead_route import RoutingDecision

    decision = RoutingDecision(
        LEAD, "005000000000015AAA", "smb-default", "smb", "v1", 60.0, T, {"why": "test"}
    )
    with ledger.write() as conn:
        pools = ledger.lock_pools(conn, ["smb", "emea"])
        assert pools == {"emea": PoolState("emea"), "smb": PoolState("smb")}
        ledger.save_pool_state(conn, PoolState("smb", 2, "2026-11-18", {"005000000000015AAA": 1}))
        assert ledger.insert_routing_decision(conn, decision)
        other = RoutingDecision(LEAD, "005000000000016AAA", "smb-default", "smb", "v1", 60.0, T, {})
        assert not ledger.insert_routing_decision(conn, other)
    assert ledger.pool_states()["smb"] == PoolState(
        "smb", 2, "2026-11-18", {"005000000000015AAA": 1}
    )
    with ledger.read() as conn:
        assert ledger.routing_decisions(conn, [LEAD])[LEAD] == decision


def test_response_candidates_are_kept_per_record(ledger: Ledger) -> None:
    candidate = ResponseCandidate(LEAD, T, "Task", "00T000000000001AAA", "005000000000030AAA")
    moved = ResponseCandidate(
        LEAD, T + timedelta(minutes=3), "Task", "00T000000000001AAA", "005000000000030AAA"
    )
    with ledger.write() as conn:
        ledger.put_candidate(conn, candidate)
        ledger.put_candidate(conn, moved)
        ledger.put_candidate(
            conn, ResponseCandidate(LEAD, T, "EmailMessage", "02s000000000001AAA", None)
        )
        found = ledger.candidates_for(conn, [LEAD])[LEAD]
        assert [(c.source, c.at) for c in found] == [
            ("EmailMessage", T),
            ("Task", T + timedelta(minutes=3)),
        ]
        ledger.drop_candidate(conn, "02s000000000001AAA")
        assert len(ledger.candidates_for(conn, [LEAD])[LEAD]) == 1


# --- concurrency on the real PostgreSQL server -------------------------------------------


@pytest.mark.postgres
def test_concurrent_first_response_updates_cannot_move_it_later(postgres_url: str) -> None:
    """Run A holds an uncommitted earlier answer; run B, which read the row before A
    wrote, tries a later one. B blocks on the row, then the guard re-checks against A's
    committed value and refuses. A read-then-write in Python would have let B win."""
    a, b = Ledger.from_url(postgres_url), Ledger.from_url(postgres_url)
    with a.write() as conn:
        a.ensure_lead_facts(conn, LEAD, created=T, owner_id=None)
        a.improve_first_response(conn, LEAD, fr(60))
    b_result: list[bool] = []
    with a.write() as conn_a:
        assert a.improve_first_response(conn_a, LEAD, fr(10))

        def run_b() -> None:
            with b.write() as conn_b:
                b_result.append(
                    b.improve_first_response(conn_b, LEAD, fr(30, record_id="00T000000000002AAA"))
                )

        thread = threading.Thread(target=run_b)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "B must wait for A's row lock"
    thread.join(10)
    assert b_result == [False]
    assert stored_fr(a)[0] == T + timedelta(minutes=10)
    a.dispose()
    b.dispose()


@pytest.mark.postgres
def test_many_concurrent_runs_settle_on_the_minimum(postgres_url: str) -> None:
    ledgers = [Ledger.from_url(postgres_url) for _ in range(4)]
    with ledgers[0].write() as conn:
        ledgers[0].ensure_lead_facts(conn, LEAD, created=T, owner_id=None)
    minutes = list(range(200, 0, -7))

    def worker(index: int) -> None:
        for m in minutes[index::4]:
            with ledgers[index].write() as conn:
                ledgers[index].improve_first_response(conn, LEAD, fr(m, record_id=f"00T{m:015d}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert stored_fr(ledgers[0])[0] == T + timedelta(minutes=min(minutes))
    for ledger in ledgers:
        ledger.dispose()


@pytest.mark.postgres
def test_pool_locks_serialise_concurrent_runs(postgres_url: str) -> None:
    """Two runs advancing the same pool: the second waits for the first's commit, so the
    pointer advances once per assignment and never from a stale position."""
    a, b = Ledger.from_url(postgres_url), Ledger.from_url(postgres_url)

    def advance(ledger: Ledger, rounds: int) -> None:
        for _ in range(rounds):
            with ledger.write() as conn:
                state = ledger.lock_pools(conn, ["smb"])["smb"]
                time.sleep(0.002)  # widen the window a lost update would need
                ledger.save_pool_state(conn, PoolState("smb", state.pointer + 1, state.day, {}))

    threads = [threading.Thread(target=advance, args=(ledger, 25)) for ledger in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert a.pool_states()["smb"].pointer == 50
    with a.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pool_state")).scalar_one() == 1
    a.dispose()
    b.dispose()


def test_the_ledger_is_the_outbox_port_the_drain_expects(ledger: Ledger) -> None:
    from kpi_pipeline.salesforce.outbox import OutboxItem, merge_items

    with ledger.write() as conn:
        ledger.enqueue_update(conn, "Lead", LEAD, {"OwnerId": "005000000000030AAA"})
        ledger.enqueue_update(conn, "Lead", LEAD, {"Template_Recommended__c": "t1"})
    items = ledger.claim_pending(10)
    assert all(isinstance(item, OutboxItem) for item in items)
    (merged,) = merge_items(items)
    assert merged.fields == {"OwnerId": "005000000000030AAA", "Template_Recommended__c": "t1"}
