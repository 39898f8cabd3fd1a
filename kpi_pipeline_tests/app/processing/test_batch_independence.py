"""A lead's facts (first response, template applied...) do not depend on how its events are cut into batches, nor on
the order they arrive in: one batch, one event per batch, three pieces, or shuffled.

Found by replaying 100,000 simulated events at two batch sizes: a Task completed and then
deleted counted only when its deletion arrived in a later batch; a Task completed and then
reopened did the same. Hypothesis draws the histories of two Tasks and an email on one lead
(created open or done, completed, reopened, deleted, undeleted; sent with a template,
directly or through its Task, deleted, undeleted)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline_tests.support.events import (
    MINUTE,
    REP_A,
    REP_B,
    T0,
    email_sent,
    email_via_task,
    event,
    lead_created,
    task_created,
)
from kpi_pipeline_tests.support.processors import make_processor

LEAD = "00Q000000000001AAA"
TASKS = ("00T000000000001AAA", "00T000000000002AAA")
EMAIL = "02s000000000001AAA"

TASK_CHANGES = ("create_done", "create_open", "complete", "reopen", "delete", "undelete")
EMAIL_CHANGES = ("send", "send_via_task", "delete", "undelete")
changes = st.lists(
    st.one_of(
        st.tuples(st.just("Task"), st.sampled_from(TASK_CHANGES), st.sampled_from(TASKS)),
        st.tuples(st.just("EmailMessage"), st.sampled_from(EMAIL_CHANGES), st.just(EMAIL)),
    ),
    min_size=1,
    max_size=8,
)


def history(drawn: list[tuple[str, str, str]], gaps: list[int]) -> list[ChangeEvent]:
    """The lead's creation, then each drawn change of a record that exists (a record is
    created once, by its first create or send; changes before it are dropped)."""
    events = [lead_created(LEAD, T0)]
    created: set[str] = set()
    at = T0
    for (entity, change, record_id), gap in zip(drawn, gaps, strict=False):
        at += gap * MINUTE
        creates = change in ("create_done", "create_open", "send", "send_via_task")
        if creates == (record_id in created):
            continue
        created.add(record_id)
        events.append(_change(entity, change, record_id, at))
    return events


def _change(entity: str, change: str, record_id: str, at: int) -> ChangeEvent:
    if change == "create_done":
        return task_created(record_id, LEAD, at, user=REP_A, CompletedDateTime=at)
    if change == "create_open":
        return task_created(record_id, LEAD, at, user=REP_A, completed=False)
    if change == "send":
        return email_sent(record_id, LEAD, at, user=REP_B, template="demo-invite")
    if change == "send_via_task":  # linked to the lead only through its logging Task
        return email_via_task(record_id, TASKS[0], at, user=REP_B, template="intro-short")
    if change == "complete":
        return event(entity, record_id, "UPDATE", at, user=REP_A, Status="Completed", IsClosed=True)
    if change == "reopen":
        return event(entity, record_id, "UPDATE", at, user=REP_A, Status="Open", IsClosed=False)
    return event(entity, record_id, change.upper(), at, user=REP_A)


def lead_facts(batches: list[list[ChangeEvent]]) -> pd.DataFrame:
    ledger = Ledger.from_url("sqlite://")  # in memory: one shared connection
    try:
        processor = make_processor(ledger)
        for batch in batches:
            processor.process(batch)
        return ledger.lead_facts_frame().set_index("Id")
    finally:
        ledger.dispose()


def cuts(events: list[ChangeEvent], rng: random.Random) -> Iterator[list[list[ChangeEvent]]]:
    yield [[e] for e in events]
    ends = sorted(rng.sample(range(1, len(events)), k=min(2, len(events) - 1)))
    yield [events[a:b] for a, b in zip([0, *ends], [*ends, len(events)], strict=True)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    yield [[e] for e in shuffled]


@settings(max_examples=60, deadline=None)
@given(changes, st.lists(st.integers(1, 90), min_size=8, max_size=8), st.randoms())
def test_lead_facts_are_the_same_however_the_events_are_batched(
    drawn: list[tuple[str, str, str]], gaps: list[int], rng: random.Random
) -> None:
    events = history(drawn, gaps)
    whole = lead_facts([events])
    for batches in cuts(events, rng):
        pd.testing.assert_frame_equal(lead_facts(batches), whole)


def test_a_task_reopened_after_it_was_completed_keeps_its_first_response() -> None:
    """The shrunk example: done at +10 min, reopened at +20; in one batch or two, the first
    response is the completion."""
    done = task_created(
        TASKS[0], LEAD, T0 + 10 * MINUTE, user=REP_A, CompletedDateTime=T0 + 10 * MINUTE
    )
    reopened = _change("Task", "reopen", TASKS[0], T0 + 20 * MINUTE)
    lead = lead_created(LEAD, T0)
    for batches in ([[lead, done, reopened]], [[lead, done], [reopened]]):
        row = lead_facts(batches).loc[LEAD]
        assert (row.First_Response_Source__c, row.Time_to_First_Response__c) == ("Task", 10.0)
