"""The lead partition function: stable across processes, total (every record of every event
in exactly one partition), activities with their lead, unknown leads by their own id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kpi_pipeline.core.events import (
    ChangeEvent,
    ChangeEventHeader,
    read_recorded_lines,
    replay_id_from_int,
)
from kpi_pipeline.core.lead_partitions import (
    LeadResolver,
    event_partitions,
    events_of_partition,
    partition_of_id,
)
from kpi_pipeline_tests.support.paths import REPO_ROOT

FIXTURE = REPO_ROOT / "kpi_pipeline" / "fixtures" / "recorded_stream.jsonl"
LEADS = [f"00Q5g00000000{n:02d}EAA" for n in range(1, 41)]


def _event(entity: str, ids: list[str], change: str = "CREATE", n: int = 1, **fields):
    header = ChangeEventHeader(entity_name=entity, record_ids=tuple(ids), change_type=change)
    return ChangeEvent(f"/data/{entity}ChangeEvent", replay_id_from_int(n), header, fields)


def _lead_in(partition: int, partitions: int = 2, skip: int = 0) -> str:
    found = [lead for lead in LEADS if partition_of_id(lead, partitions) == partition]
    return found[skip]


def test_the_hash_is_pinned_and_the_same_in_a_fresh_interpreter() -> None:
    # Pinned values: a change of hash would move leads between partitions on upgrade.
    pinned = [partition_of_id(lead, 4) for lead in LEADS[:8]]
    assert pinned == [3, 3, 0, 1, 0, 3, 3, 2]
    code = (
        "from kpi_pipeline.core.lead_partitions import partition_of_id as p;"
        f"print([p(i, 4) for i in {LEADS[:8]!r}])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == str(pinned)


def test_fifteen_and_eighteen_character_ids_agree_and_every_partition_is_used() -> None:
    for lead in LEADS:
        assert partition_of_id(lead, 7) == partition_of_id(lead[:15], 7)
    assert {partition_of_id(lead, 4) for lead in LEADS} == {0, 1, 2, 3}
    assert {partition_of_id(lead, 1) for lead in LEADS} == {0}


@pytest.mark.parametrize("partitions", [0, 257])
def test_a_partition_count_out_of_range_is_refused(partitions: int) -> None:
    with pytest.raises(ValueError, match="lead partitions must be"):
        partition_of_id(LEADS[0], partitions)


def test_a_task_and_an_email_go_with_their_lead() -> None:
    lead = _lead_in(1)
    task = "00T5g000000000aAAA"
    events = [
        _event("Lead", [lead], n=1),
        _event("Task", [task], n=2, WhoId=lead, Status="Completed"),
        _event("EmailMessage", ["02s000000000001AAA"], n=3, RelatedToId=lead),
        # Linked only through its Task, whose WhoId is in the same round.
        _event("EmailMessage", ["02s000000000002AAA"], n=4, ActivityId=task),
    ]
    resolver = LeadResolver.of(events, {})
    assert events_of_partition(events, 1, 2, resolver) == events
    assert events_of_partition(events, 0, 2, resolver) == []


def test_links_come_from_the_last_event_carrying_them_then_from_the_stored_state() -> None:
    old, new = _lead_in(0), _lead_in(1)
    task = "00T5g000000000bAAA"
    stored = {("Task", task): {"WhoId": old}}
    update = _event("Task", [task], "UPDATE", n=2, Status="Completed")
    # No link in the round: the stored WhoId decides.
    assert event_partitions(update, 2, LeadResolver.of([update], stored)) == {0: (task,)}
    # The round re-links it: every event of the task follows the newest link.
    relink = _event("Task", [task], "UPDATE", n=3, WhoId=new)
    resolver = LeadResolver.of([update, relink], stored)
    assert event_partitions(update, 2, resolver) == {1: (task,)}
    # A nulled link: the task has no lead any more, so its own id decides.
    nulled = _event("Task", [task], "UPDATE", n=4, WhoId=None)
    resolver = LeadResolver.of([relink, nulled], stored)
    own = partition_of_id(task, 2)
    assert event_partitions(update, 2, resolver) == {own: (task,)}


def test_an_activity_of_an_unknown_lead_lands_by_its_own_id() -> None:
    for n in range(30):
        task = f"00T5g0000000{n:03d}AAA"
        event = _event("Task", [task], "UPDATE", n=n + 1, Status="Completed")
        found = event_partitions(event, 3, LeadResolver.of([event], {}))
        assert found == {partition_of_id(task, 3): (task,)}
        # A contact (003...) is not a lead either.
        contact = _event("Task", [task], n=n + 1, WhoId="0035g0000000001AAA")
        found = event_partitions(contact, 3, LeadResolver.of([contact], {}))
        assert found == {partition_of_id(task, 3): (task,)}


def test_a_change_to_many_records_is_split_and_gaps_go_to_partition_zero() -> None:
    zero, one = _lead_in(0), _lead_in(1)
    bulk = _event("Lead", [zero, one], "UPDATE", n=5, Status="Working")
    resolver = LeadResolver.of([bulk], {})
    (in_zero,) = events_of_partition([bulk], 0, 2, resolver)
    (in_one,) = events_of_partition([bulk], 1, 2, resolver)
    assert in_zero.record_ids == (zero,) and in_one.record_ids == (one,)
    assert in_zero.fields == in_one.fields == bulk.fields
    assert in_zero.replay_id == bulk.replay_id
    gap = _event("Lead", [one], "GAP_UPDATE", n=6)
    assert event_partitions(gap, 2, resolver) == {0: (one,)}


@pytest.mark.parametrize("partitions", [1, 2, 3, 8])
def test_every_record_of_the_shipped_stream_is_in_exactly_one_partition(partitions: int) -> None:
    with Path(FIXTURE).open(encoding="utf-8") as handle:
        events = list(read_recorded_lines(handle))
    resolver = LeadResolver.of(events, {})
    split = [events_of_partition(events, p, partitions, resolver) for p in range(partitions)]
    pairs = [(e.replay_id, rid) for part in split for e in part for rid in e.record_ids]
    # The same multiset of (event, record): every record of every event in one partition
    # (the stream re-delivers some events, so replay ids alone repeat).
    assert sorted(pairs) == sorted((e.replay_id, rid) for e in events for rid in e.record_ids)
    for part in split:  # a subsequence of the delivery order
        remaining = iter(events)
        assert all(any(_same_change(e, o) for o in remaining) for e in part)
    # Every activity that names a lead is with that lead.
    for p, part in enumerate(split):
        for event in part:
            if event.entity in ("Task", "EmailMessage"):
                for rid in event.record_ids:
                    lead = resolver.lead_of(event.entity, rid)
                    if lead is not None:
                        assert partition_of_id(lead, partitions) == p


def _same_change(part: ChangeEvent, original: ChangeEvent) -> bool:
    """``part`` is ``original``, possibly narrowed to some of its records."""
    return (
        part.replay_id == original.replay_id
        and part.fields == original.fields
        and set(part.record_ids) <= set(original.record_ids)
    )
