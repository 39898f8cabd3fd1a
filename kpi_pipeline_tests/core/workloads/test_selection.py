"""Event selection: the one-pass index of a batch's events by record."""

from __future__ import annotations

from dataclasses import replace

from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.selection import events_by_record, events_of
from kpi_pipeline_tests.support.events import (
    MINUTE,
    T0,
    email_sent,
    event,
    lead_created,
    task_done,
)

LEADS = ["00Q000000000001AAA", "00Q000000000002AAA"]


def both(change: ChangeEvent) -> ChangeEvent:
    """The same change to both leads (one event, two record ids)."""
    return replace(change, header=replace(change.header, record_ids=tuple(LEADS)))


def test_events_by_record_gives_what_events_of_gives_for_every_record() -> None:
    events = [
        lead_created(LEADS[0], T0),
        task_done("00T000000000001AAA", LEADS[0], T0 + MINUTE),
        email_sent("02s000000000001AAA", LEADS[1], T0 + 2 * MINUTE),
        lead_created(LEADS[1], T0 + 3 * MINUTE),
        both(event("Lead", LEADS[0], "UPDATE", T0 + 4 * MINUTE, OwnerId="005000000000002AAA")),
        email_sent("02s000000000002AAA", LEADS[0], T0 + 5 * MINUTE),
    ]
    index = events_by_record(events)
    ids = {rid for e in events for rid in e.record_ids} | set(LEADS) | {"00Q000000000009AAA"}
    for record_id in sorted(ids):
        assert index.get(record_id, []) == events_of(events, record_id), record_id
    # A lead's emails (RelatedToId) come with it, in delivery order.
    assert [e.entity for e in index[LEADS[1]]] == ["EmailMessage", "Lead", "Lead"]
