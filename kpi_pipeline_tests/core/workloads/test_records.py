from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int
from kpi_pipeline.core.workloads.records import RecordState, event_version, fold_events, merge_event
from kpi_pipeline_tests.support.events import (
    INTEGRATION,
    LEAD,
    REP,
    SANDBOX_QUEUE,
    event,
    lead_created,
    ms,
)


def queued_lead(**fields: object) -> ChangeEvent:
    """LEAD created at 0 by the integration user, owned by the sandbox queue, with ``fields``."""
    return lead_created(LEAD, ms(0), owner=SANDBOX_QUEUE, user=INTEGRATION, typical=False, **fields)


def _lead_history() -> list[ChangeEvent]:
    return [
        queued_lead(Company="Acme", Status="Open"),
        event("Lead", LEAD, "UPDATE", ms(5), user=REP, Status="Working"),
        event("Lead", LEAD, "UPDATE", ms(9), user=REP, Status="Nurture", Title="CTO"),
        event("Lead", LEAD, "UPDATE", ms(12), user=REP, nulled=("Title",)),
    ]


def test_fields_are_last_writer_wins_by_commit_version():
    history = _lead_history()
    state = fold_events(history, LEAD)
    assert state.fields["Status"] == "Nurture"
    assert state.fields["Title"] is None  # nulledFields set the field to null
    assert state.fields["Company"] == "Acme"
    assert state.versions["Status"] == event_version(history[2])
    assert state.versions["Company"] == event_version(history[0])


def test_every_order_and_duplicates_give_the_same_state():
    history = _lead_history()
    expected = fold_events(history, LEAD)
    for order in itertools.permutations(history + history[:2]):
        assert fold_events(list(order), LEAD) == expected


def test_older_event_does_not_overwrite_newer_field():
    history = _lead_history()
    newest_first = fold_events([history[2], history[1]], LEAD)
    assert newest_first.fields["Status"] == "Nurture"


def test_delete_and_undelete_follow_the_version_rule():
    create = queued_lead()
    delete = event("Lead", LEAD, "DELETE", ms(10), user=REP)
    undelete = event("Lead", LEAD, "UNDELETE", ms(20), user=REP)
    assert fold_events([create, undelete, delete], LEAD).deleted is False
    assert fold_events([create, delete], LEAD).deleted is True


def test_gap_events_change_nothing():
    state = fold_events(
        [queued_lead(Company="Acme")],
        LEAD,
    )
    gap = event("Lead", LEAD, "GAP_UPDATE", ms(30), user=REP, Company="Other")
    assert merge_event(state, gap, LEAD) == state


def test_created_ms_and_creator_come_from_the_create_event():
    history = _lead_history()
    state = fold_events(history, LEAD)
    assert state.created_ms == history[0].header.commit_timestamp
    assert state.created_by == INTEGRATION
    assert state.last_commit_user == REP


def test_json_round_trip_is_lossless():
    state = fold_events(_lead_history(), LEAD)
    assert RecordState.from_json(state.to_json()) == state
    assert RecordState.from_json(json.dumps(state.to_json())) == state


def test_merging_an_event_for_another_record_is_refused():
    other = lead_created(
        "00Q000000000002AAA", ms(0), owner=SANDBOX_QUEUE, user=INTEGRATION, typical=False
    )
    with pytest.raises(ValueError, match="not among the event's recordIds"):
        merge_event(None, other, LEAD)
    state = fold_events([queued_lead()], LEAD)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_event(state, event("Task", LEAD, "UPDATE", ms(1), user=REP), LEAD)


def test_malformed_stored_state_names_the_problem():
    with pytest.raises(ValueError, match=r"RecordState\.to_json"):
        RecordState.from_json({"fields": {}})


@pytest.mark.parametrize("version", ["123", [1, 2], [1, 2, 3, 4], 5, None])
def test_a_malformed_stored_version_names_the_problem(version):
    stored = fold_events(_lead_history(), LEAD).to_json()
    stored["versions"] = {**stored["versions"], "Company": version}
    with pytest.raises(ValueError, match=r"RecordState\.to_json"):
        RecordState.from_json(stored)


def test_multi_record_event_updates_each_named_record():
    header = ChangeEventHeader(
        entity_name="Lead",
        record_ids=(LEAD, "00Q000000000002AAA"),
        change_type="UPDATE",
        commit_timestamp=1_800_000_000_000,
        commit_number=7,
    )
    bulk = ChangeEvent("/data/LeadChangeEvent", replay_id_from_int(1), header, {"Status": "Closed"})
    for record_id in bulk.record_ids:
        assert merge_event(None, bulk, record_id).fields == {"Status": "Closed"}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_any_permutation_with_duplicates_is_the_same_state(data):
    history = [
        *_lead_history(),
        event("Lead", LEAD, "UPDATE", ms(5), user=REP, seq=2, Rating="Hot"),
        event("Lead", LEAD, "DELETE", ms(40), user=REP),
    ]
    expected = fold_events(history, LEAD)
    duplicated = history + data.draw(st.lists(st.sampled_from(history), max_size=6))
    shuffled = data.draw(st.permutations(duplicated))
    assert fold_events(list(shuffled), LEAD) == expected


def _address_history() -> list[ChangeEvent]:
    return [
        queued_lead(Address={"City": "Berlin", "Country": "Germany", "Street": "Main 1"}),
        event(
            "Lead", LEAD, "UPDATE", ms(5), user=REP, Address={"City": "Munich"}
        ),  # decoder: changed child only
        event(
            "Lead", LEAD, "UPDATE", ms(7), user=REP, nulled=("Address.Street",)
        ),  # recorded JSON: dotted name
        event("Lead", LEAD, "UPDATE", ms(9), user=REP, Name={"FirstName": "Ada"}),
    ]


def test_compound_fields_merge_child_by_child():
    state = fold_events(_address_history(), LEAD)
    assert state.fields["Address"] == {"City": "Munich", "Country": "Germany", "Street": None}
    assert state.fields["Name"] == {"FirstName": "Ada"}


def test_a_whole_compound_value_competes_with_its_children_by_version():
    children_later = [
        event("Lead", LEAD, "UPDATE", ms(1), user=REP, nulled=("Address",)),
        event("Lead", LEAD, "UPDATE", ms(2), user=REP, Address={"City": "Paris"}),
    ]
    whole_later = [
        event("Lead", LEAD, "UPDATE", ms(1), user=REP, Address={"City": "Paris"}),
        event("Lead", LEAD, "UPDATE", ms(2), user=REP, nulled=("Address",)),
    ]
    for history, expected in ((children_later, {"City": "Paris"}), (whole_later, None)):
        for order in itertools.permutations(history):
            assert fold_events(list(order), LEAD).fields["Address"] == expected


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_compound_merges_are_order_independent(data):
    history = _address_history()
    expected = fold_events(history, LEAD)
    duplicated = history + data.draw(st.lists(st.sampled_from(history), max_size=4))
    assert fold_events(list(data.draw(st.permutations(duplicated))), LEAD) == expected
