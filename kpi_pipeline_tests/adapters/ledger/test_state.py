"""Workload state in the ledger on SQLite and PostgreSQL: the SQL guards, outbox, frames."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger, schema
from kpi_pipeline.core.kpis import lead_facts_columns, validate_lead_facts
from kpi_pipeline.core.ledger_rows import DecisionRow
from kpi_pipeline.core.workloads.first_touch import FirstResponse, ResponseCandidate
from kpi_pipeline.core.workloads.pools import PoolState

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


def test_outbox_marks_dirty_fields_once_per_record_and_claims_are_exclusive(
    ledger: Ledger,
) -> None:
    with ledger.write() as conn:
        assert ledger.mark_dirty(conn, "Lead", LEAD, ["OwnerId", "Routing_Rule__c"]) is True
        assert ledger.mark_dirty(conn, "Lead", LEAD, ["Routing_Rule__c"]) is False  # waiting
        assert ledger.mark_dirty(conn, "Lead", LEAD, ["Owner_Assigned_At__c"]) is True
    (row,) = ledger.outbox()
    # groups go together: the assignment time never travels without its latency
    assert row.dirty == [
        "Assignment_Latency_Minutes__c",
        "OwnerId",
        "Owner_Assigned_At__c",
        "Routing_Rule__c",
    ]
    (claim,) = ledger.claim_dirty(10)
    assert ledger.claim_dirty(10) == []  # a held claim is not handed out twice
    ledger.release_claims(claim.token, [claim.id], "UNABLE_TO_LOCK_ROW", retryable=True)
    (again,) = ledger.claim_dirty(10)
    assert again.id == claim.id and again.token != claim.token
    ledger.confirm_sent(again.token, [(again, {"Routing_Rule__c": "smb-default"})])
    (row,) = ledger.outbox()
    assert (row.status, row.attempts, row.dirty, row.confirmed) == (
        "sent",
        2,
        [],
        {"Routing_Rule__c": "smb-default"},
    )
    assert ledger.claim_dirty(10) == []
    with pytest.raises(ValueError, match="at least 1"):
        ledger.claim_dirty(0)


def test_outbox_refuses_fields_it_holds_no_value_for(ledger: Ledger) -> None:
    with ledger.write() as conn, pytest.raises(ValueError, match="no ledger value for Lead"):
        ledger.mark_dirty(conn, "Lead", LEAD, ["Description"])
    with ledger.write() as conn, pytest.raises(ValueError, match="Lead fields only"):
        ledger.mark_dirty(conn, "Task", "00T000000000001AAA", ["Status"])


def test_a_row_dirtied_while_claimed_stays_pending_after_its_confirmation(ledger: Ledger) -> None:
    with ledger.write() as conn:
        ledger.mark_dirty(conn, "Lead", LEAD, ["Template_Recommended__c"])
    (claim,) = ledger.claim_dirty(10)
    with ledger.write() as conn:  # the ledger changed while the drain was sending
        ledger.mark_dirty(conn, "Lead", LEAD, ["Template_Recommended__c"])
    ledger.confirm_sent(claim.token, [(claim, {"Template_Recommended__c": "t1"})])
    (row,) = ledger.outbox()
    assert (row.status, row.dirty) == ("pending", ["Template_Recommended__c"])
    assert row.confirmed == {"Template_Recommended__c": "t1"}


def test_one_confirmation_settles_clean_and_redirtied_rows_each_by_its_own_rule(
    ledger: Ledger,
) -> None:
    leads = [f"00Q00000000000{n}AAA" for n in range(1, 5)]
    with ledger.write() as conn:
        for lead in leads:
            ledger.mark_dirty(conn, "Lead", lead, ["Template_Recommended__c"])
    claims = ledger.claim_dirty(10)
    with ledger.write() as conn:  # two of them changed again while the drain was sending
        for lead in leads[1::2]:
            ledger.mark_dirty(conn, "Lead", lead, ["Template_Recommended__c"])
    ledger.confirm_sent(
        claims[0].token,
        [(claim, {"Template_Recommended__c": f"t{n}"}) for n, claim in enumerate(claims)],
    )
    rows = {row.record_id: row for row in ledger.outbox()}
    by_claim = {claim.record_id: n for n, claim in enumerate(claims)}
    for n, lead in enumerate(leads):
        row = rows[lead]
        expected = ("sent", []) if n % 2 == 0 else ("pending", ["Template_Recommended__c"])
        assert (row.status, row.dirty) == expected
        assert row.confirmed == {"Template_Recommended__c": f"t{by_claim[lead]}"}


@pytest.mark.postgres
def test_a_confirmation_beside_an_uncommitted_mark_leaves_the_new_mark_pending(
    postgres_url: str,
) -> None:
    """A drain confirms a row while a batch, in another transaction, is marking it dirty
    again (the stream worker drains on its own thread). The confirmation must wait for the
    batch and see the moved generation; read unlocked, it saw the old one, its UPDATE then
    waited on the row and settled it as sent, and the batch's new mark was lost."""
    batch, drain = Ledger.from_url(postgres_url), Ledger.from_url(postgres_url)
    with batch.write() as conn:
        batch.mark_dirty(conn, "Lead", LEAD, ["Template_Recommended__c"])
    (claim,) = drain.claim_dirty(10)
    with batch.write() as conn:
        batch.mark_dirty(conn, "Lead", LEAD, ["SLA_Due_At__c"])  # not committed yet

        def confirm() -> None:
            drain.confirm_sent(claim.token, [(claim, {"Template_Recommended__c": "t1"})])

        thread = threading.Thread(target=confirm)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the confirmation must wait for the batch's row lock"
    thread.join(10)
    (row,) = batch.outbox()
    assert row.status == "pending"
    assert "SLA_Due_At__c" in row.dirty
    assert row.confirmed == {"Template_Recommended__c": "t1"}
    batch.dispose()
    drain.dispose()


def test_failed_for_good_rows_wait_for_an_operator_or_a_new_change(ledger: Ledger) -> None:
    with ledger.write() as conn:
        ledger.mark_dirty(conn, "Lead", LEAD, ["OwnerId"])
    (claim,) = ledger.claim_dirty(10)
    ledger.release_claims(claim.token, [claim.id], "INVALID_FIELD", retryable=False)
    assert ledger.claim_dirty(10) == []
    assert [(r.status, r.last_error) for r in ledger.outbox()] == [("failed", "INVALID_FIELD")]
    with ledger.write() as conn:
        assert ledger.mark_dirty(conn, "Lead", LEAD, ["OwnerId"]) is True
    assert [c.id for c in ledger.claim_dirty(10)] == [claim.id]


def test_a_row_refused_for_good_but_marked_dirty_meanwhile_goes_back_to_pending(
    ledger: Ledger,
) -> None:
    """The org refused the values the drain sent, but a batch had computed new ones while
    they were on the way: those were never refused, so the row waits for the next drain
    instead of for an operator. A row nothing changed is failed for good as before."""
    leads = ["00Q000000000001AAA", "00Q000000000002AAA"]
    with ledger.write() as conn:
        for lead in leads:
            ledger.mark_dirty(conn, "Lead", lead, ["Template_Recommended__c"])
    claims = ledger.claim_dirty(10)
    with ledger.write() as conn:  # the batch beside the drain
        ledger.mark_dirty(conn, "Lead", leads[1], ["SLA_Due_At__c"])
    ledger.release_claims(
        claims[0].token,
        [claim.id for claim in claims],
        "INVALID_FIELD",
        retryable=False,
        claimed_generations={claim.id: claim.generation for claim in claims},
    )
    rows = {row.record_id: row for row in ledger.outbox()}
    assert (rows[leads[0]].status, rows[leads[0]].last_error) == ("failed", "INVALID_FIELD")
    assert rows[leads[1]].status == "pending"
    assert "SLA_Due_At__c" in rows[leads[1]].dirty
    assert [claim.record_id for claim in ledger.claim_dirty(10)] == [leads[1]]


def test_a_claim_whose_lease_expired_is_handed_out_again_and_the_old_holder_loses_it(
    ledger_url: str,
) -> None:
    now = [T]
    ledger = Ledger.from_url(ledger_url, clock=lambda: now[0])
    with ledger.write() as conn:
        ledger.mark_dirty(conn, "Lead", LEAD, ["OwnerId"])
    (first,) = ledger.claim_dirty(1, lease=timedelta(seconds=60))
    now[0] = T + timedelta(seconds=50)
    assert ledger.renew_claims(first.token, lease=timedelta(seconds=60)) == {first.id}
    now[0] = T + timedelta(seconds=100)
    assert ledger.claim_dirty(1) == []  # renewed: still held
    health = ledger.outbox_health()
    assert (health.by_status["claimed"], health.expired_claims) == (1, 0)
    now[0] = T + timedelta(seconds=111)
    assert ledger.outbox_health().expired_claims == 1
    (second,) = ledger.claim_dirty(1)
    assert second.id == first.id
    assert ledger.renew_claims(first.token) == set()  # the dead drainer's token is void
    ledger.confirm_sent(first.token, [(first, {"OwnerId": "005000000000030AAA"})])
    (row,) = ledger.outbox()
    assert (row.status, row.confirmed) == ("claimed", {})  # a late confirmation is ignored
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
    # Read back whole (the rows are built by column position): every field round-trips.
    assert ledger.decisions_between() == [row("c", 1), row("a", 5, "first_touch"), row("b", 5)]
    assert [f.name for f in dataclasses.fields(DecisionRow)] == [
        c.name for c in schema.decisions.columns
    ]
    assert [
        d.id for d in ledger.decisions_between(T + timedelta(minutes=2), T + timedelta(minutes=6))
    ] == ["a", "b"]
    assert ledger.decisions_between(workload="first_touch")[0].request["metadata"] == {
        "lead_id": LEAD
    }


def test_pool_state_round_trips_and_routing_decisions_are_memoized(ledger: Ledger) -> None:
    from kpi_pipeline.core.workloads.lead_route import RoutingDecision

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


def _row_by_row_frame(ledger: Ledger, created_from: datetime, created_to: datetime) -> pd.DataFrame:
    """The frame as SQLAlchemy's result processing reads it (the path the columnar read
    replaced), for comparison."""
    from kpi_pipeline.adapters.ledger import facts_frame
    from kpi_pipeline.adapters.ledger import schema as t

    c = t.lead_facts.c
    columns = list(lead_facts_columns())
    query = (
        sa.select(*(c[name] for name in columns))
        .where(c.CreatedDate >= created_from, c.CreatedDate < created_to)
        .order_by(c.Id)
    )
    with ledger.read() as conn:
        frame = pd.DataFrame([tuple(r) for r in conn.execute(query)], columns=columns)
    # The columnar read's own dtype step (test_facts_frame.py checks the dtypes), so the
    # comparison is about what each path reads.
    return facts_frame.typed(frame)


def test_the_columnar_frame_equals_sqlalchemys_row_by_row_read(ledger: Ledger) -> None:
    """Microseconds, NULLs, empty text, and a window edge equal to a creation time."""
    with ledger.write() as conn:
        for n in range(6):
            lead_id = f"00Q00000000000{n}AAA"
            created = T + timedelta(minutes=n, microseconds=n * 1001)
            ledger.ensure_lead_facts(conn, lead_id, created=created, owner_id=None if n % 2 else "")
            if n % 3 == 0:
                ledger.improve_first_response(
                    conn, lead_id, fr(7.25 + n, record_id=f"00T00000000000{n}AAA")
                )
            ledger.set_assignment(conn, lead_id, created + timedelta(seconds=n), n / 3)
    edge_from, edge_to = T + timedelta(minutes=1, microseconds=1001), T + timedelta(minutes=5)
    frame = ledger.lead_facts_frame(edge_from, edge_to)
    pd.testing.assert_frame_equal(frame, _row_by_row_frame(ledger, edge_from, edge_to))
    assert list(frame["Id"]) == [f"00Q00000000000{n}AAA" for n in range(1, 5)]
    assert frame["OwnerId"].tolist() == [None, "", None, ""]
