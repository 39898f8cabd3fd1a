"""Lead partitions in the ledger (SQLite and PostgreSQL): one live lease per partition, none
across partition counts; per-partition completion marks a batch complete only once every
partition of its N has completed it, idempotently; link fields for the resolver."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger import partitions as lp
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline_tests.support.events import email_via_task, lead_created, ms, task_done
from kpi_pipeline_tests.support.processors import make_processor

TTL = timedelta(minutes=10)
SCHEMAS = {"schemaA": '{"type": "record", "name": "LeadChangeEvent", "fields": []}'}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(ledger: Ledger) -> tuple[Ledger, Clock]:
    clock = Clock()
    return Ledger(ledger.engine, clock=clock), clock


def test_one_run_per_partition_and_none_across_partition_counts(clocked) -> None:
    ledger, clock = clocked
    lease = lp.acquire_partition(ledger, 0, 2, holder="run-a", ttl=TTL)
    assert (lease.partition, lease.partitions, lease.holder) == (0, 2, "run-a")
    lp.acquire_partition(ledger, 1, 2, holder="run-b", ttl=TTL)  # the other partition: free
    with pytest.raises(lp.PartitionBusy, match="run run-a holds partition 0/2"):
        lp.acquire_partition(ledger, 0, 2, holder="run-c", ttl=TTL)
    # Partition 2 of 4 shares leads with partition 0 of 2: refused while any 2-lease lives.
    with pytest.raises(lp.PartitionBusy, match="partition 2/4 is not free"):
        lp.acquire_partition(ledger, 2, 4, holder="run-c", ttl=TTL)
    # The holder itself renews (Dagster's retry of a run keeps its root run id).
    again = lp.acquire_partition(ledger, 0, 2, holder="run-a", ttl=TTL)
    assert again.acquired_at == lease.acquired_at
    lp.hold_partition(ledger, 0, 2, holder="run-a", ttl=TTL)
    with pytest.raises(lp.PartitionBusy, match="no longer holds"):
        lp.hold_partition(ledger, 0, 2, holder="run-c", ttl=TTL)

    lp.release_partition(ledger, 0, holder="run-a")
    with pytest.raises(lp.PartitionBusy, match="no longer holds"):
        lp.hold_partition(ledger, 0, 2, holder="run-a", ttl=TTL)
    assert lp.acquire_partition(ledger, 0, 2, holder="run-c", ttl=TTL).holder == "run-c"

    # A holder that died stops renewing: its lease expires and another run may take it.
    clock.now += TTL + timedelta(seconds=1)
    with pytest.raises(lp.PartitionBusy):
        lp.hold_partition(ledger, 1, 2, holder="run-b", ttl=TTL)
    assert lp.acquire_partition(ledger, 1, 4, holder="run-d", ttl=TTL).partitions == 4


def test_release_partitions_frees_every_live_lease(clocked) -> None:
    ledger, _ = clocked
    for partition in range(3):
        lp.acquire_partition(ledger, partition, 3, holder=f"run-{partition}", ttl=TTL)
    assert lp.release_partitions(ledger) == 3
    assert lp.release_partitions(ledger) == 0
    assert lp.acquire_partition(ledger, 1, 3, holder="new", ttl=TTL).holder == "new"
    assert [lease.holder for lease in lp.partition_leases(ledger)] == ["run-0", "new", "run-2"]


def _stage(ledger: Ledger, n: int) -> str:
    raw = RawEvent("/data/LeadChangeEvent", replay_id_from_int(n), "schemaA", b"x", f"e{n}")
    return ledger.stage_batch("/data/LeadChangeEvent", [raw], SCHEMAS).batch_id


def test_a_batch_is_complete_only_when_every_partition_completed_it(ledger: Ledger) -> None:
    first, second = _stage(ledger, 1), _stage(ledger, 2)
    assert lp.complete_partition(ledger, [first, second], 1, 3, run_id="r1") == []
    assert lp.complete_partition(ledger, [first, second], 1, 3, run_id="r1b") == []  # again
    assert lp.complete_partition(ledger, [first], 0, 3, run_id="r0") == []
    # Completions under another N do not count towards N = 3.
    assert lp.complete_partition(ledger, [first], 0, 2, run_id="x") == []
    assert lp.complete_partition(ledger, [first, second], 2, 3, run_id="r2") == [first]
    assert lp.completed_partitions(ledger, first) == {3: {0, 1, 2}, 2: {0}}
    assert lp.complete_partition(ledger, [second], 0, 3, run_id="r0") == [second]
    # Idempotent: completing again reports them complete again (mark_batch_done is the
    # one that tells the first completion).
    assert lp.complete_partition(ledger, [first], 2, 3, run_id="r2") == [first]


def test_stored_links_cover_the_tasks_the_round_s_emails_name(ledger: Ledger) -> None:
    lead, task, email = "00Q000000000001AAA", "00T000000000001AAA", "02s000000000001AAA"
    make_processor(ledger).process([lead_created(lead, ms(0)), task_done(task, lead, ms(5))])
    # A later round holds only the email: the Task it names is read from the ledger.
    links = lp.stored_links(ledger, [email_via_task(email, task, ms(6))])
    assert links == {("Task", task): {"WhoId": lead}}
    # Once stored, the email's own links are read too.
    make_processor(ledger).process([email_via_task(email, task, ms(6))])
    links = lp.stored_links(ledger, [email_via_task(email, task, ms(7))])
    assert links[("EmailMessage", email)] == {"RelatedToId": None, "ActivityId": task}
    assert links[("Task", task)] == {"WhoId": lead}


def test_a_round_resolves_with_one_copy_of_the_stored_links(ledger: Ledger) -> None:
    first, second = "00Q000000000001AAA", "00Q000000000002AAA"
    task = "00T000000000001AAA"
    processor = make_processor(ledger)
    processor.process([lead_created(first, ms(0)), task_done(task, first, ms(5))])
    done = task_done(task, first, ms(9))
    update = dataclasses.replace(done, fields={"Status": "Completed"})  # no WhoId in it
    key = lp.round_key(["batch-a"], 2)
    assert lp.round_links(ledger, key, [update]) == {("Task", task): {"WhoId": first}}
    # Another writer re-links the task while the round runs (a re-sync, say): the round's
    # other partition runs still resolve with the copy the first one read.
    processor.process([task_done(task, second, ms(10))])
    assert lp.stored_links(ledger, [update]) == {("Task", task): {"WhoId": second}}
    assert lp.round_links(ledger, key, [update]) == {("Task", task): {"WhoId": first}}
    # Another round (other batches, or another N) reads afresh; so does this one once the
    # sensor has released the rounds (no processing run in progress).
    other = lp.round_key(["batch-a"], 3)
    assert lp.round_links(ledger, other, [update]) == {("Task", task): {"WhoId": second}}
    # A round without activities is kept too (as empty).
    assert lp.round_links(ledger, lp.round_key(["batch-b"], 2), []) == {}
    lp.release_partitions(ledger)
    assert lp.round_links(ledger, key, [update]) == {("Task", task): {"WhoId": second}}
