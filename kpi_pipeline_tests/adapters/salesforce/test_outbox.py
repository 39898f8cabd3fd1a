"""drain_outbox against the sandbox REST server, with a simple in-test outbox (the ledger-backed
outbox is tested in app/writeback/test_writeback.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_pipeline.app.outbox_drain import OutboxItem, drain_outbox, merge_items
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg


class ListOutbox:
    """The OutboxPort contract over a list: pending -> claimed -> sent | failed | pending."""

    def __init__(self) -> None:
        self.items: dict[int, OutboxItem] = {}
        self.status: dict[int, str] = {}
        self.errors: dict[int, str] = {}

    def add(self, sobject: str, record_id: str, fields: dict[str, Any]) -> int:
        item_id = len(self.items) + 1
        self.items[item_id] = OutboxItem(item_id, sobject, record_id, fields)
        self.status[item_id] = "pending"
        return item_id

    def claim_pending(self, limit: int) -> list[OutboxItem]:
        ids = [i for i, s in sorted(self.status.items()) if s == "pending"][:limit]
        for item_id in ids:
            self.status[item_id] = "claimed"
        return [self.items[i] for i in ids]

    def still_held(self, ids: Sequence[int]) -> set[int]:
        return {i for i in ids if self.status[i] == "claimed"}

    def mark_sent(self, ids: Sequence[int]) -> None:
        for item_id in ids:
            assert self.status[item_id] == "claimed", f"item {item_id} sent without being claimed"
            self.status[item_id] = "sent"

    def mark_failed(self, id: int, error: str, *, retryable: bool) -> None:
        assert self.status[id] == "claimed"
        self.status[id] = "pending" if retryable else "failed"
        self.errors[id] = error

    def with_status(self, status: str) -> list[int]:
        return [i for i, s in sorted(self.status.items()) if s == status]


def confirmed_record_ids(org: SandboxOrg) -> set[str]:
    """Records Salesforce (the sandbox) actually updated: UPDATE events with our client marker."""
    return {
        change.header["recordIds"][0]
        for change in org.store.iter_changes()
        if change.header["changeType"] == "UPDATE"
        and change.header["changeOrigin"].endswith("client=kpi_pipeline")
    }


def test_drain_sends_everything_and_marks_it_sent(org: SandboxOrg) -> None:
    ids = org.create_leads(3)
    outbox = ListOutbox()
    for i, lead in enumerate(ids):
        outbox.add("Lead", lead, {"Routing_Rule__c": f"rule-{i}"})

    report = drain_outbox(outbox, org.rest())

    assert (
        report.complete
        and report.sent == [1, 2, 3]
        and report.claimed == 3
        and report.requests == 1
    )
    assert outbox.with_status("sent") == [1, 2, 3]
    assert [org.store.get_record("Lead", lead)["Routing_Rule__c"] for lead in ids] == [
        "rule-0",
        "rule-1",
        "rule-2",
    ]
    assert drain_outbox(outbox, org.rest()).claimed == 0  # nothing left: a no-op


def test_updates_to_one_record_are_merged_later_fields_win(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    outbox = ListOutbox()
    outbox.add("Lead", lead, {"Routing_Rule__c": "first", "Routing_Policy_Version__c": "v1"})
    outbox.add("Lead", lead, {"Routing_Rule__c": "second"})

    report = drain_outbox(outbox, org.rest())

    assert report.sent == [1, 2]
    (request,) = org.data_requests("/composite/sobjects")
    assert request.body["records"] == [
        {
            "attributes": {"type": "Lead"},
            "id": lead,
            "Routing_Rule__c": "second",
            "Routing_Policy_Version__c": "v1",
        }
    ]
    assert org.store.get_record("Lead", lead)["Routing_Rule__c"] == "second"


def test_server_failing_mid_drain_leaves_the_rest_pending(org: SandboxOrg) -> None:
    leads = org.create_leads(450)
    outbox = ListOutbox()
    for lead in leads:
        outbox.add("Lead", lead, {"Template_Recommended__c": "tmpl-7"})
    org.server.faults.fail_next_requests(
        50, after=1
    )  # the first batch gets through, then the org is down

    report = drain_outbox(outbox, org.rest(max_attempts=2), batch_size=200)

    assert report.sent == list(range(1, 201))
    assert report.error is not None and "HTTP 500" in report.error and not report.complete
    assert outbox.with_status("sent") == list(range(1, 201))
    assert outbox.with_status("pending") == list(
        range(201, 451)
    )  # nothing lost, nothing claimed forever
    assert "unconfirmed" in outbox.errors[201]
    assert confirmed_record_ids(org) == set(leads[:200])  # only confirmed items were marked sent

    org.server.faults.fail_next_requests(0)
    again = drain_outbox(outbox, org.rest(), batch_size=200)
    assert again.complete and len(again.sent) == 250 and again.batches == 2
    assert outbox.with_status("sent") == list(range(1, 451))
    assert confirmed_record_ids(org) == set(leads)


def test_dropped_connection_mid_drain_leaves_items_pending(org: SandboxOrg) -> None:
    leads = org.create_leads(3)
    outbox = ListOutbox()
    for lead in leads:
        outbox.add("Lead", lead, {"Template_Recommended__c": "t"})
    org.server.faults.fail_next_requests(10, drop_connection=True)

    report = drain_outbox(outbox, org.rest(max_attempts=2))

    assert report.sent == [] and "unreachable" in (report.error or "")
    assert outbox.with_status("pending") == [1, 2, 3]
    assert confirmed_record_ids(org) == set()


def test_auth_failure_leaves_items_pending_with_the_fix(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    outbox = ListOutbox()
    outbox.add("Lead", lead, {"Routing_Rule__c": "r"})

    report = drain_outbox(outbox, org.rest(org.jwt_provider(username="stranger@example.com")))

    assert report.sent == [] and "pre-authorize the user" in (report.error or "")
    assert outbox.with_status("pending") == [1]
    assert org.data_requests("/composite/sobjects") == []


def test_permanent_and_retryable_failures(org: SandboxOrg) -> None:
    good, locked = org.create_leads(2)
    outbox = ListOutbox()
    outbox.add("Lead", good, {"Routing_Rule__c": "ok"})
    outbox.add("Lead", "00Q5g0000009999AAA", {"Routing_Rule__c": "gone"})
    outbox.add("Lead", locked, {"Routing_Rule__c": "later"})
    outbox.add("Lead", good, {"Bogus__c": 1})  # merged into item 1's record: the whole update fails
    org.server.faults.lock_rows([locked], times=5)

    report = drain_outbox(outbox, org.rest(max_attempts=2))

    assert outbox.with_status("failed") == [1, 2, 4]
    assert "INVALID_CROSS_REFERENCE_KEY" in outbox.errors[2] and "INVALID_FIELD" in outbox.errors[1]
    assert outbox.with_status("pending") == [3]
    assert "UNABLE_TO_LOCK_ROW" in outbox.errors[3]
    assert set(report.failed) == {1, 2, 4} and set(report.retry_later) == {3}
    assert report.error is None and not report.complete


def test_drain_stops_after_a_batch_that_left_work_for_later(org: SandboxOrg) -> None:
    leads = org.create_leads(4)
    outbox = ListOutbox()
    for lead in leads:
        outbox.add("Lead", lead, {"Routing_Rule__c": "r"})
    org.server.faults.lock_rows([leads[0]], times=100)

    report = drain_outbox(outbox, org.rest(max_attempts=2), batch_size=2)

    # Batch 1 leaves lead 0 for later; the drain does not go on to re-claim it in a loop.
    assert report.batches == 1 and report.sent == [2] and outbox.with_status("pending") == [1, 3, 4]


def test_items_of_several_sobjects_and_bad_batch_size(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    outbox = ListOutbox()
    outbox.add("Lead", lead, {"Routing_Rule__c": "r"})
    outbox.add("No Such Type", lead, {"X": 1})

    report = drain_outbox(outbox, org.rest())

    assert report.sent == [1] and outbox.with_status("failed") == [2]
    assert "not a Salesforce API name" in outbox.errors[2]
    with pytest.raises(ValueError, match="batch_size"):
        drain_outbox(outbox, org.rest(), batch_size=0)


def test_merge_items_orders_by_id() -> None:
    merged = merge_items(
        [
            OutboxItem(5, "Lead", "00Q5g0000000001EAA", {"A": "late"}),
            OutboxItem(2, "Lead", "00Q5g0000000001EAA", {"A": "early", "B": 1}),
            OutboxItem(3, "Task", "00Q5g0000000001EAA", {"A": "task"}),
        ]
    )
    assert [(m.sobject, m.fields, m.item_ids) for m in merged] == [
        ("Lead", {"A": "late", "B": 1}, [2, 5]),
        ("Task", {"A": "task"}, [3]),
    ]


# --- merge property ------------------------------------------------------------------------------

_records = st.sampled_from(["00Q5g0000000001EAA", "00Q5g0000000002EAA", "00Q5g0000000003EAA"])
_fields = st.dictionaries(
    st.sampled_from(["A", "B", "C"]), st.one_of(st.none(), st.integers(0, 9)), max_size=3
)


@given(st.lists(st.tuples(_records, _fields), max_size=20), st.randoms(use_true_random=False))
def test_merging_equals_applying_items_one_by_one_in_id_order(
    entries: list[tuple[str, dict]], rnd: random.Random
) -> None:
    items = [
        OutboxItem(i + 1, "Lead", record_id, fields)
        for i, (record_id, fields) in enumerate(entries)
    ]
    expected: dict[str, dict] = {}
    for item in items:
        expected.setdefault(item.record_id, {}).update(item.fields)
    shuffled = list(items)
    rnd.shuffle(shuffled)  # claim order must not matter: ids decide

    merged = merge_items(shuffled)

    assert {m.record_id: m.fields for m in merged} == expected
    assert sorted(i for m in merged for i in m.item_ids) == [i.id for i in items]
