"""``BatchWork``: the set-based writes of a batch step keep the per-row statements' rules,
undo one lead's work on request, and lock what they read (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.workloads.first_touch import FirstResponse
from kpi_pipeline.core.workloads.writeback_fields import UnknownWritebackField

T = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
LEADS = [f"00Q00000000000{n}AAA" for n in range(1, 4)]


def fr(
    minutes: float, source: str = "Task", record_id: str = "00T000000000001AAA"
) -> FirstResponse:
    return FirstResponse(
        T + timedelta(minutes=minutes), "005000000000030AAA", source, record_id, minutes
    )


def facts(ledger: Ledger, lead_id: str) -> dict:
    with ledger.read() as conn:
        return dict(ledger.lead_facts(conn, [lead_id])[lead_id]._mapping)


def test_the_first_response_guard_is_the_per_row_statements(ledger: Ledger) -> None:
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        batch.preload([LEADS[0]])
        batch.ensure_lead_facts(LEADS[0], created=T, owner_id=None)
        steps = [
            (fr(30), True),
            (fr(45, record_id="00T000000000002AAA"), False),  # later: never
            (fr(30), False),  # the same: no change
            (fr(30, source="EmailMessage", record_id="02s000000000009AAA"), True),  # email first
            (fr(30, source="EmailMessage", record_id="02s000000000001AAA"), True),  # lower id
            (fr(30, source="Task", record_id="00T000000000000AAA"), False),  # task after email
            (fr(12), True),  # earlier: always
        ]
        assert [batch.improve_first_response(LEADS[0], value) for value, _ in steps] == [
            expected for _, expected in steps
        ]
        assert batch.set_assignment(LEADS[0], T + timedelta(minutes=5), 5.0)
        assert not batch.set_assignment(LEADS[0], T + timedelta(minutes=9), 9.0)
        assert not batch.set_assignment(LEADS[1], T, 0.0)  # no row: nothing to set
        batch.flush()
    row = facts(ledger, LEADS[0])
    assert (row["First_Response_At__c"], row["first_response_record_id"]) == (
        T + timedelta(minutes=12),
        "00T000000000001AAA",
    )
    assert row["Assignment_Latency_Minutes__c"] == 5.0
    with ledger.read() as conn:
        assert ledger.lead_facts(conn, [LEADS[1]]) == {}
    # A later batch reads what this one wrote, and the guard holds across batches.
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        assert not batch.improve_first_response(LEADS[0], fr(20))
        assert batch.improve_first_response(LEADS[0], fr(3))
        batch.flush()
    assert facts(ledger, LEADS[0])["Time_to_First_Response__c"] == 3.0


def test_rollback_undoes_one_leads_work_and_keeps_the_others(ledger: Ledger) -> None:
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        batch.preload(LEADS)
        for lead_id in LEADS:
            batch.checkpoint()
            batch.ensure_lead_facts(lead_id, created=T, owner_id="005000000000030AAA")
            batch.improve_first_response(lead_id, fr(10))
            batch.mark_dirty("Lead", lead_id, ["First_Response_At__c"])
            if lead_id == LEADS[1]:
                batch.set_template_recommended(lead_id, "tmpl")
                batch.rollback()  # its workload code failed
            else:
                batch.release()
        batch.flush()
    with ledger.read() as conn:
        assert sorted(ledger.lead_facts(conn, LEADS)) == [LEADS[0], LEADS[2]]
    assert sorted(r.record_id for r in ledger.outbox()) == [LEADS[0], LEADS[2]]

    # A lead that existed before: rollback restores the values it had.
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        batch.checkpoint()
        assert batch.improve_first_response(LEADS[0], fr(1))
        batch.mark_dirty("Lead", LEADS[0], ["Template_Applied__c"])
        batch.rollback()
        batch.flush()
    assert facts(ledger, LEADS[0])["Time_to_First_Response__c"] == 10.0
    assert all("Template_Applied__c" not in r.dirty for r in ledger.outbox())


def test_marks_merge_per_record_and_widen_a_waiting_row_once(ledger: Ledger) -> None:
    with ledger.write() as conn:
        ledger.mark_dirty(conn, "Lead", LEADS[0], ["OwnerId"])
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        with pytest.raises(UnknownWritebackField):
            batch.mark_dirty("Lead", LEADS[0], ["NoSuchField__c"])
        batch.mark_dirty("Lead", LEADS[0], ["OwnerId"])  # already waiting
        batch.mark_dirty("Lead", LEADS[0], ["Template_Recommended__c"])
        batch.mark_dirty("Lead", LEADS[1], ["Template_Applied__c"])
        batch.flush()
    rows = {r.record_id: r for r in ledger.outbox()}
    assert set(rows[LEADS[0]].dirty) == {"OwnerId", "Template_Recommended__c"}
    assert list(rows[LEADS[1]].dirty) == ["Template_Applied__c"]
    with ledger.write() as conn:
        batch = ledger.batch_work(conn)
        batch.mark_dirty("Lead", LEADS[0], ["OwnerId"])  # nothing new: the row stays
        batch.flush()
    assert {r.record_id: sorted(r.dirty) for r in ledger.outbox()}[LEADS[0]] == [
        "OwnerId",
        "Template_Recommended__c",
    ]


@pytest.mark.postgres
def test_a_second_run_waits_for_the_rows_and_then_sees_the_first_runs_answer(
    postgres_url: str,
) -> None:
    """Run A holds the lead's row (preloaded) with an earlier answer in memory; run B
    preloads the same lead and must wait until A commits, then its in-memory guard sees
    A's answer and refuses a later one: a read-then-write without the lock would win."""
    a, b = Ledger.from_url(postgres_url), Ledger.from_url(postgres_url)
    try:
        with a.write() as conn:
            a.ensure_lead_facts(conn, LEADS[0], created=T, owner_id=None)
            a.improve_first_response(conn, LEADS[0], fr(60))
        b_result: list[bool] = []
        with a.write() as conn_a:
            batch_a = a.batch_work(conn_a)
            batch_a.preload([LEADS[0]])
            assert batch_a.improve_first_response(LEADS[0], fr(10))

            def run_b() -> None:
                with b.write() as conn_b:
                    batch_b = b.batch_work(conn_b)
                    batch_b.preload([LEADS[0]])
                    b_result.append(
                        batch_b.improve_first_response(
                            LEADS[0], fr(30, record_id="00T000000000002AAA")
                        )
                    )
                    batch_b.flush()

            thread = threading.Thread(target=run_b)
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive(), "B must wait for A's lock"
            batch_a.flush()
        thread.join(10)
        assert b_result == [False]
        assert facts(a, LEADS[0])["First_Response_At__c"] == T + timedelta(minutes=10)
    finally:
        a.dispose()
        b.dispose()


@pytest.mark.postgres
def test_a_row_another_writer_inserts_after_the_read_still_gets_the_batchs_marks(
    postgres_url: str,
) -> None:
    """``policy recompute`` takes no batch lock: its outbox row can appear between a batch's
    read of the outbox and its insert (which then does nothing). The batch's marks must still
    reach that row."""
    ledger = Ledger.from_url(postgres_url)
    try:
        inserted, done = threading.Event(), threading.Event()

        def other_writer() -> None:
            with ledger.write() as conn:
                ledger.mark_dirty(conn, "Lead", LEADS[2], ["SLA_Due_At__c"])
                inserted.set()
                time.sleep(1.0)  # uncommitted while the batch reads, then commits
            done.set()

        thread = threading.Thread(target=other_writer)
        thread.start()
        assert inserted.wait(10)
        with ledger.write() as conn:
            batch = ledger.batch_work(conn)
            batch.mark_dirty("Lead", LEADS[2], ["Template_Recommended__c"])
            batch.flush()  # reads no row, then its insert waits for the other commit
        thread.join(10)
        assert done.is_set()
        rows = {r.record_id: sorted(r.dirty) for r in ledger.outbox()}
        assert rows[LEADS[2]] == ["SLA_Due_At__c", "Template_Recommended__c"]
    finally:
        ledger.dispose()
