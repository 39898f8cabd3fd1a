from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int
from kpi_pipeline.core.workloads.records import RecordState, event_version, fold_events, merge_event

from .builders import INTEGRATION, LEAD, REP, event, lead_create


def _lead_history() -> list[ChangeEvent]:
    return [
        lead_create(Company="Acme", Status="Open"),
        event("Lead", LEAD, "UPDATE", 5, {"Status": "Working"}),
        event("Lead", LEAD, "UPDATE", 9, {"Status": "Nurture", "Title": "CTO"}),
        event("Lead", LEAD, "UPDATE", 12, {}, nulled=("Title",)),
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
    create = lead_create()
    delete = event("Lead", LEAD, "DELETE", 10, {})
    undelete = event("Lead", LEAD, "UNDELETE", 20, {})
    assert fold_events([create, undelete, delete], LEAD).deleted is False
    assert fold_events([create, delete], LEAD).deleted is True


def test_gap_events_change_nothing():
    state = fold_events([lead_create(Company="Acme")], LEAD)
    gap = event("Lead", LEAD, "GAP_UPDATE", 30, {"Company": "Other"})
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
    other = lead_create("00Q000000000002AAA")
    with pytest.raises(ValueError, match="not among the event's recordIds"):
        merge_event(None, other, LEAD)
    state = fold_events([lead_create()], LEAD)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_event(state, event("Task", LEAD, "UPDATE", 1, {}), LEAD)


def test_malformed_stored_state_names_the_problem():
    with pytest.raises(ValueError, match=r"RecordState\.to_json"):
        RecordState.from_json({"fields": {}})


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
        event("Lead", LEAD, "UPDATE", 5, {"Rating": "Hot"}, sequence=2),
        event("Lead", LEAD, "DELETE", 40, {}),
    ]
    expected = fold_events(history, LEAD)
    duplicated = history + data.draw(st.lists(st.sampled_from(history), max_size=6))
    shuffled = data.draw(st.permutations(duplicated))
    assert fold_events(list(shuffled), LEAD) == expected


def _address_history() -> list[ChangeEvent]:
    return [
        lead_create(Address={"City": "Berlin", "Country": "Germany", "Street": "Main 1"}),
        event(
            "Lead", LEAD, "UPDATE", 5, {"Address": {"City": "Munich"}}
        ),  # decoder: changed child only
        event(
            "Lead", LEAD, "UPDATE", 7, {}, nulled=("Address.Street",)
        ),  # recorded JSON: dotted name
        event("Lead", LEAD, "UPDATE", 9, {"Name": {"FirstName": "Ada"}}),
    ]


def test_compound_fields_merge_child_by_child():
    state = fold_events(_address_history(), LEAD)
    assert state.fields["Address"] == {"City": "Munich", "Country": "Germany", "Street": None}
    assert state.fields["Name"] == {"FirstName": "Ada"}


def test_a_whole_compound_value_competes_with_its_children_by_version():
    children_later = [
        event("Lead", LEAD, "UPDATE", 1, {}, nulled=("Address",)),
        event("Lead", LEAD, "UPDATE", 2, {"Address": {"City": "Paris"}}),
    ]
    whole_later = [
        event("Lead", LEAD, "UPDATE", 1, {"Address": {"City": "Paris"}}),
        event("Lead", LEAD, "UPDATE", 2, {}, nulled=("Address",)),
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
