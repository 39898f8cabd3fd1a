"""The batch processor over a real SQLite ledger: workloads, idempotence, order independence."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable

import fastavro
import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.adapters.pubsub.schemas import schema_json
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.writeback import resolve_from_ledger
from kpi_pipeline.core.events import ChangeEvent, read_recorded_lines
from kpi_pipeline.core.outbox import Claim
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.core.workloads.outreach_templates import LocalRanker, load_catalog
from kpi_pipeline.fixtures import RECORDED_STREAM
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, encode_change
from kpi_pipeline.telemetry import metrics
from kpi_pipeline_tests.support.events import (
    AUTOMATION_USER,
    INTEGRATION_USER,
    MINUTE,
    QUEUE,
    REP_A,
    REP_B,
    SMB_POOL,
    T0,
    email_sent,
    event,
    lead_created,
    task_done,
)
from kpi_pipeline_tests.support.processors import CLIENT_ID, make_processor

NewLedger = Callable[..., Ledger]


def facts(ledger: Ledger, lead_id: str) -> pd.Series:
    frame = ledger.lead_facts_frame()
    return frame.set_index("Id").loc[lead_id]


def test_first_response_settles_and_only_ever_moves_earlier(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    lead = lead_created("00Q000000000001AAA", T0)
    late_task = task_done("00T000000000001AAA", lead.record_ids[0], T0 + 30 * MINUTE)
    processor.process([lead, late_task])
    row = facts(ledger, "00Q000000000001AAA")
    assert (row.First_Response_Source__c, row.Time_to_First_Response__c) == ("Task", 30.0)

    earlier_email = email_sent(
        "02s000000000001AAA", "00Q000000000001AAA", T0 + 10 * MINUTE, user=REP_B
    )
    processor.process([earlier_email])
    row = facts(ledger, "00Q000000000001AAA")
    assert (row.First_Response_Source__c, row.First_Response_User__c) == ("EmailMessage", REP_B)
    assert row.Time_to_First_Response__c == 10.0
    assert row.First_Response_At__c == pd.Timestamp(T0 + 10 * MINUTE, unit="ms", tz="UTC")

    even_later = task_done("00T000000000002AAA", "00Q000000000001AAA", T0 + 60 * MINUTE)
    processor.process([even_later, late_task, lead])  # later candidate plus re-deliveries
    assert facts(ledger, "00Q000000000001AAA").Time_to_First_Response__c == 10.0


@pytest.mark.parametrize("cut", ["one batch", "two batches"])
def test_a_task_deleted_after_it_was_completed_keeps_its_first_response(
    new_ledger: NewLedger, cut: str
) -> None:
    """The replay of 100,000 simulated events once gave 15 leads a different first response
    at ``--batch-size 10000`` than at 500: a Task completed and then deleted counted only when
    its deletion arrived in a later batch. Both cuts now give the same answer."""
    ledger = new_ledger()
    processor = make_processor(ledger)
    lead = lead_created("00Q000000000001AAA", T0)
    task = task_done("00T000000000001AAA", "00Q000000000001AAA", T0 + 12 * MINUTE)
    deleted = event("Task", "00T000000000001AAA", "DELETE", T0 + 50 * MINUTE, user=REP_A)
    later = task_done("00T000000000002AAA", "00Q000000000001AAA", T0 + 90 * MINUTE)
    events = [lead, task, deleted, later]
    for batch in [events] if cut == "one batch" else [events[:2], events[2:]]:
        processor.process(batch)
    row = facts(ledger, "00Q000000000001AAA")
    assert (row.First_Response_Source__c, row.Time_to_First_Response__c) == ("Task", 12.0)


def test_email_ranks_before_task_at_the_same_instant(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    at = T0 + 5 * MINUTE
    processor.process(
        [
            lead_created("00Q000000000001AAA", T0),
            task_done("00T000000000001AAA", "00Q000000000001AAA", at),
        ]
    )
    processor.process([email_sent("02s000000000009AAA", "00Q000000000001AAA", at)])
    assert facts(ledger, "00Q000000000001AAA").First_Response_Source__c == "EmailMessage"


def test_a_response_that_arrives_before_its_lead_waits_for_it(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    summary = processor.process(
        [task_done("00T000000000001AAA", "00Q000000000001AAA", T0 + 7 * MINUTE)]
    )
    assert summary["first_touch"]["waiting_for_lead"] == 1
    assert ledger.lead_facts_frame().empty
    processor.process([lead_created("00Q000000000001AAA", T0)])
    assert facts(ledger, "00Q000000000001AAA").Time_to_First_Response__c == 7.0


def test_automation_users_and_responses_before_creation_do_not_count(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    processor.process(
        [
            lead_created("00Q000000000001AAA", T0),
            email_sent(
                "02s000000000001AAA", "00Q000000000001AAA", T0 + MINUTE, user=AUTOMATION_USER
            ),
            task_done("00T000000000001AAA", "00Q000000000001AAA", T0 - MINUTE),
        ]
    )
    row = facts(ledger, "00Q000000000001AAA")
    assert pd.isna(row.First_Response_At__c) and row.First_Response_Source__c is None


def test_routing_is_memoized_per_lead(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    first = lead_created("00Q000000000001AAA", T0)
    summary = processor.process([first])
    assert summary["routing"]["routed_lead_ids"] == ["00Q000000000001AAA"]
    row = facts(ledger, "00Q000000000001AAA")
    assert row.OwnerId in SMB_POOL and row.Routing_Rule__c == "smb-default"
    assert row.Owner_Assigned_At__c == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert row.Assignment_Latency_Minutes__c == 0.0 and row.SLA_Minutes == 60.0
    pointer = ledger.pool_states()["smb"]
    outbox = ledger.outbox()

    again = processor.process([first, first])  # re-delivery, twice
    assert again["routing"]["routed"] == 0 and again["routing"]["memoized"] == 1
    assert facts(ledger, "00Q000000000001AAA").OwnerId == row.OwnerId
    assert ledger.pool_states()["smb"] == pointer
    assert ledger.outbox() == outbox
    assert len(ledger.decisions_between(workload="lead_route")) == 1

    processor.process([lead_created("00Q000000000002AAA", T0 + MINUTE)])
    assert ledger.pool_states()["smb"].pointer == pointer.pointer + 1


def outgoing(ledger: Ledger, record_id: str) -> dict:
    """What a drain would send for the record now (its dirty fields' current ledger values)."""
    rows = [r for r in ledger.outbox(record_id=record_id) if r.dirty]
    claims = [Claim(r.id, r.sobject, r.record_id, tuple(r.dirty), 0, "", r.confirmed) for r in rows]
    rules = make_processor(ledger).owner_rules
    values = resolve_from_ledger(ledger, claims, rules).values
    return values[rows[0].id] if rows else {}


def test_routing_writes_the_assignment_to_the_outbox(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    make_processor(ledger).process([lead_created("00Q000000000001AAA", T0)])
    routing = outgoing(ledger, "00Q000000000001AAA")
    assert routing["OwnerId"] in SMB_POOL
    assert routing["Routing_Rule__c"] == "smb-default"
    assert routing["Owner_Assigned_At__c"] == "2026-11-18T11:06:40.000Z"
    assert routing["Assignment_Latency_Minutes__c"] == 0.0
    assert "Template_Recommended__c" in routing
    assert len(ledger.outbox(record_id="00Q000000000001AAA")) == 1  # one row per record


def test_leads_created_by_a_rep_are_not_routed_but_assigned_at_creation(
    new_ledger: NewLedger,
) -> None:
    ledger = new_ledger()
    summary = make_processor(ledger).process([lead_created("00Q000000000001AAA", T0, owner=REP_A)])
    assert summary["routing"]["owned"] == 1
    row = facts(ledger, "00Q000000000001AAA")
    assert (row.OwnerId, row.Routing_Rule__c, row.Assignment_Latency_Minutes__c) == (
        REP_A,
        None,
        0.0,
    )
    assert ledger.decisions_between(workload="lead_route") == []


def test_echoes_of_our_own_writes_never_trigger_work(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    processor.process([lead_created("00Q000000000001AAA", T0, owner=REP_A)])
    echo = event(
        "Lead",
        "00Q000000000001AAA",
        "UPDATE",
        T0 + MINUTE,
        origin=f"com/salesforce/api/rest/64.0;client={CLIENT_ID}",
        OwnerId=QUEUE,
    )
    assert processor.select_routing([echo]) == []
    summary = processor.process([echo])
    assert summary["routing"]["leads"] == 0
    assert (
        ledger.record("Lead", "00Q000000000001AAA").fields["OwnerId"] == QUEUE
    )  # state still merges


def test_gap_events_open_resync_windows_once(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = make_processor(ledger)
    gap = event("Lead", "00Q000000000001AAA", "GAP_UPDATE", T0)
    overflow = event("Task", "000000000000000AAA", "GAP_OVERFLOW", T0 + 1)
    processor.process([gap, overflow])
    processor.process([gap, overflow])
    windows = ledger.open_resync_windows()
    assert [(w.channel, w.reason, w.from_time_ms) for w in windows] == [
        ("/data/LeadChangeEvent", "gap", T0),
        ("/data/TaskChangeEvent", "gap_overflow", T0 + 1),
    ]
    assert windows[0].detail["record_ids"] == ["00Q000000000001AAA"]
    assert ledger.record("Lead", "00Q000000000001AAA") is None


def test_undecodable_events_are_dead_lettered_and_the_rest_proceeds(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    lead = lead_created("00Q000000000001AAA", T0)
    schema_id, payload = encode_change(
        StoredChange(1, "Lead", lead.header.to_recorded(), dict(lead.fields), T0)
    )
    channel = "/data/LeadChangeEvent"
    good = RawEvent(channel, (1).to_bytes(8, "big"), schema_id, payload)
    bad = RawEvent(channel, (2).to_bytes(8, "big"), schema_id, b"\x02\xff not avro")
    staged = ledger.stage_batch(channel, [good, bad], {schema_id: schema_json(schema_id)})
    processor = make_processor(ledger)
    decoded = processor.decode(ledger.load_batch(staged.batch_id), EventDecoder(schema_json))
    assert decoded.dead_lettered == 1
    assert [e.record_ids for e in decoded.events] == [("00Q000000000001AAA",)]
    (letter,) = ledger.dead_letters()
    assert (letter.stage, letter.replay_id, letter.payload) == (
        "decode",
        bad.replay_id,
        bad.payload,
    )
    assert "PayloadDecodeError" in letter.reason


def test_each_batch_is_decoded_with_the_schemas_staged_with_it(new_ledger: NewLedger) -> None:
    """An admin adds a custom field between two batches: the Lead schema gets a new id. Each
    batch decodes with the schema staged with it; nothing is fetched, and a decoder whose
    cache holds another text for an id reads the staged one."""
    ledger = new_ledger()
    channel = "/data/LeadChangeEvent"
    before = DEFAULT_SCHEMAS
    after = before.with_custom_field("Lead", "Territory__c", "Text")
    lead_id = "00Q000000000001AAA"
    created = lead_created(lead_id, T0)
    first_id, first_payload = encode_change(
        StoredChange(1, "Lead", created.header.to_recorded(), dict(created.fields), T0), before
    )
    update = event("Lead", lead_id, "UPDATE", T0 + MINUTE, Territory__c="EMEA")
    second_id, second_payload = encode_change(
        StoredChange(2, "Lead", update.header.to_recorded(), dict(update.fields), T0 + MINUTE),
        after,
    )
    assert first_id != second_id
    first = ledger.stage_batch(
        channel,
        [RawEvent(channel, (1).to_bytes(10, "big"), first_id, first_payload)],
        {first_id: before.schema_json(first_id)},
    )
    second = ledger.stage_batch(
        channel,
        [RawEvent(channel, (2).to_bytes(10, "big"), second_id, second_payload)],
        {second_id: after.schema_json(second_id)},
    )
    fetched: list[str] = []

    def fetch(schema_id: str) -> str:
        fetched.append(schema_id)
        return before.schema_json(first_id)  # a stale answer for any id

    decoder = EventDecoder(fetch)
    decoder.decode(RawEvent(channel, (9).to_bytes(10, "big"), first_id, first_payload))
    decoder._schemas[second_id] = decoder._schemas[first_id]  # the cache holds a wrong text
    fetched.clear()
    processor = make_processor(ledger)
    one = processor.decode(ledger.load_batch(first.batch_id), decoder)
    two = processor.decode(ledger.load_batch(second.batch_id), decoder)
    assert fetched == [] and one.dead_lettered == two.dead_lettered == 0
    assert [e.schema_id for e in one.events + two.events] == [first_id, second_id]
    assert "Territory__c" not in one.events[0].fields
    assert two.events[0].fields["Territory__c"] == "EMEA"
    assert "Territory__c" in two.events[0].header.changed_fields


def test_an_unmappable_bitmap_element_is_skipped_and_the_event_is_processed(
    new_ledger: NewLedger,
) -> None:
    """A changedFields element the schema cannot map ("2-0x01": Company is no compound) is
    skipped and counted; the event is staged, decoded, merged, not dead-lettered."""
    ledger = new_ledger()
    lead_id = "00Q000000000001AAA"
    created = lead_created(lead_id, T0)
    update = event("Lead", lead_id, "UPDATE", T0 + MINUTE, Title="CTO")
    channel = "/data/LeadChangeEvent"
    raws = []
    for replay, change in enumerate((created, update), start=1):
        stored = StoredChange(replay, "Lead", change.header.to_recorded(), dict(change.fields), T0)
        schema_id, payload = encode_change(stored)
        if change is update:
            parsed = fastavro.parse_schema(json.loads(schema_json(schema_id)))
            record = fastavro.schemaless_reader(io.BytesIO(payload), parsed, None)
            record["ChangeEventHeader"]["changedFields"].append("2-0x01")
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parsed, record)
            payload = out.getvalue()
        raws.append(RawEvent(channel, replay.to_bytes(8, "big"), schema_id, payload))
    staged = ledger.stage_batch(channel, raws, {schema_id: schema_json(schema_id)})
    before = metrics.sample_value("errors_total", {"area": "cdc_bitmap"})
    processor = make_processor(ledger)
    decoded = processor.decode(ledger.load_batch(staged.batch_id), EventDecoder(schema_json))
    assert decoded.dead_lettered == 0 and ledger.dead_letters() == []
    assert metrics.sample_value("errors_total", {"area": "cdc_bitmap"}) == before + 1
    assert "Title" in decoded.events[1].header.changed_fields
    processor.process(decoded.events)
    assert ledger.record("Lead", lead_id).fields["Title"] == "CTO"


def test_a_batch_whose_schema_is_not_staged_is_dead_lettered_not_fetched(
    new_ledger: NewLedger,
) -> None:
    ledger = new_ledger()
    lead = lead_created("00Q000000000001AAA", T0)
    schema_id, payload = encode_change(
        StoredChange(1, "Lead", lead.header.to_recorded(), dict(lead.fields), T0)
    )
    channel = "/data/LeadChangeEvent"
    staged = ledger.stage_batch(
        channel, [RawEvent(channel, (1).to_bytes(8, "big"), schema_id, payload)], {schema_id: "x"}
    )
    batch = ledger.load_batch(staged.batch_id)
    batch.schemas.clear()  # as if the ledger lost the row
    decoded = make_processor(ledger).decode(batch, EventDecoder(schema_json))
    assert decoded.dead_lettered == 1 and decoded.events == []
    (letter,) = ledger.dead_letters()
    assert "was not staged with batch" in letter.reason


def test_template_applied_comes_from_the_first_outbound_email(new_ledger: NewLedger) -> None:
    first, second = load_catalog().templates[:2]
    ledger = new_ledger()
    processor = make_processor(ledger)
    lead = "00Q000000000001AAA"
    processor.process([lead_created(lead, T0)])
    processor.process([email_sent("02s000000000002AAA", lead, T0 + 9 * MINUTE, template=second.id)])
    assert facts(ledger, lead).Template_Applied__c == second.id
    processor.process([email_sent("02s000000000001AAA", lead, T0 + 2 * MINUTE, template=first.id)])
    row = facts(ledger, lead)
    assert row.Template_Applied__c == first.id  # the earlier email wins
    assert row.Template_Recommended__c is not None
    # The outbox holds what is dirty, not snapshots: only the current (earliest) one goes out.
    assert outgoing(ledger, lead)["Template_Applied__c"] == first.id


# --- order independence on the shipped stream ------------------------------------------


def _stream() -> list[ChangeEvent]:
    with RECORDED_STREAM.open() as handle:
        return list(read_recorded_lines(handle))


def _run(ledger: Ledger, batches: list[list[ChangeEvent]]) -> pd.DataFrame:
    processor = make_processor(ledger, load_policy())  # the packaged policy, on the shipped stream
    for batch in batches:
        processor.process(batch)
    return ledger.lead_facts_frame()


def _chunks(events: list[ChangeEvent], size: int) -> list[list[ChangeEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def test_duplicate_and_reordered_deliveries_give_identical_lead_facts(
    new_ledger: NewLedger,
) -> None:
    events = _stream()
    reference = _run(new_ledger("in_order"), _chunks(events, 50))
    assert len(reference) == 60 and reference["First_Response_At__c"].notna().sum() > 20

    rng = random.Random(5)
    # Channels drift apart (activities delivered before the leads they belong to), each
    # batch arrives shuffled, and earlier batches are delivered again in between.
    leads = [e for e in events if e.entity == "Lead"]
    activities = [e for e in events if e.entity != "Lead"]
    batches = _chunks(activities, 37) + _chunks(leads, 23)
    redelivered: list[list[ChangeEvent]] = []
    for index, batch in enumerate(batches):
        shuffled = batch[:]
        rng.shuffle(shuffled)
        redelivered.append(shuffled)
        if index % 3 == 2:
            redelivered.append(batches[index - 1][:])
    scrambled = _run(new_ledger("scrambled"), redelivered)
    pd.testing.assert_frame_equal(reference, scrambled)

    whole_twice = _run(new_ledger("twice"), _chunks(events, 50) + _chunks(events, 50))
    pd.testing.assert_frame_equal(reference, whole_twice)


@pytest.mark.parametrize("size", [1, 500])
def test_batch_size_does_not_change_lead_facts(new_ledger: NewLedger, size: int) -> None:
    events = _stream()
    reference = _run(new_ledger("fifty"), _chunks(events, 50))
    pd.testing.assert_frame_equal(reference, _run(new_ledger(f"size{size}"), _chunks(events, size)))


@pytest.mark.postgres
def test_postgresql_ledger_gives_the_same_lead_facts_as_sqlite(
    new_ledger: NewLedger, postgres_url: str
) -> None:
    events = _stream()
    reference = _run(new_ledger("sqlite"), _chunks(events, 50))
    postgres = Ledger.from_url(postgres_url)
    try:
        pd.testing.assert_frame_equal(reference, _run(postgres, _chunks(events, 50)))
        pool_pointer = postgres.pool_states()
        _run(postgres, _chunks(events, 50))  # the whole stream again: nothing moves
        assert postgres.pool_states() == pool_pointer
    finally:
        postgres.dispose()


class _SelectorFailingFor:
    """A template selector (the LLM boundary) that breaks on one lead's data."""

    def __init__(self, lead_company: str) -> None:
        self.company = lead_company
        self.ranker = LocalRanker()

    def select(self, lead_fields, catalog):  # type: ignore[no-untyped-def]
        if lead_fields.get("Company") == self.company:
            raise RuntimeError("selector cannot handle this lead")
        return self.ranker.select(lead_fields, catalog)


def test_workload_failure_on_one_lead_dead_letters_it_and_the_batch_goes_on(
    new_ledger: NewLedger,
) -> None:

    ledger = new_ledger()
    processor = make_processor(ledger, selector=_SelectorFailingFor("Broken Co"))
    bad = lead_created("00Q000000000001AAA", T0, Company="Broken Co")
    good = lead_created("00Q000000000002AAA", T0 + MINUTE)
    summary = processor.process([bad, good])
    assert summary["templates"]["dead_lettered"] == 1
    assert summary["templates"]["failed_lead_ids"] == ["00Q000000000001AAA"]
    assert summary["templates"]["recommended"] == 1
    (letter,) = ledger.dead_letters()
    assert (letter.stage, letter.replay_id) == ("recommend_templates", bad.replay_id)
    assert "selector cannot handle this lead" in letter.reason
    frame = ledger.lead_facts_frame().set_index("Id")
    assert frame.loc["00Q000000000001AAA", "Template_Recommended__c"] is None  # rolled back
    assert frame.loc["00Q000000000001AAA", "Routing_Rule__c"] == "smb-default"  # routing kept
    assert frame.loc["00Q000000000002AAA", "Template_Recommended__c"] is not None
    assert len(ledger.decisions_between(workload="outreach_template")) == 1


def test_a_poison_lead_inside_a_bulk_batch_is_dead_lettered_alone(
    new_ledger: NewLedger, ledger_url: str
) -> None:
    """Set-based steps write a whole batch at once; one lead whose workload code fails in
    the middle of it is undone and dead-lettered, and every other lead of the batch is
    written: facts, decisions, write-back marks. On SQLite and PostgreSQL, through
    ``process()`` (bulk writes, record states handed from the merge to the steps)."""

    ledger = new_ledger(url=ledger_url)
    processor = make_processor(ledger, selector=_SelectorFailingFor("Broken Co"))
    ids = [f"00Q000000000{n:03d}AAA" for n in range(1, 61)]
    poison_id = ids[29]
    batch: list[ChangeEvent] = []
    for n, lead_id in enumerate(ids):
        company = "Broken Co" if lead_id == poison_id else f"Company {n}"
        batch.append(lead_created(lead_id, T0 + n * MINUTE, Company=company))
        batch.append(task_done(f"00T000000000{n:03d}AAA", lead_id, T0 + (n + 5) * MINUTE))
    summary = processor.process(batch)

    assert summary["templates"]["failed_lead_ids"] == [poison_id]
    assert summary["templates"]["recommended"] == 59
    (letter,) = ledger.dead_letters()
    assert (letter.stage, letter.replay_id) == ("recommend_templates", batch[58].replay_id)
    frame = ledger.lead_facts_frame().set_index("Id")
    others = [i for i in ids if i != poison_id]
    assert frame.loc[poison_id, "Template_Recommended__c"] is None  # its writes undone
    assert frame.loc[others, "Template_Recommended__c"].notna().all()
    assert frame.loc[ids, "Routing_Rule__c"].notna().all()  # routing ran for all 60
    assert (frame.loc[ids, "Time_to_First_Response__c"] == 5.0).all()
    templates = ledger.decisions_between(workload="outreach_template")
    assert sorted(d.lead_id for d in templates) == others
    assert len(ledger.decisions_between(workload="first_touch")) == 60
    marked = {r.record_id: set(r.dirty) for r in ledger.outbox()}
    assert "Template_Recommended__c" not in marked[poison_id]
    assert all("Template_Recommended__c" in marked[i] for i in others)
    assert all({"OwnerId", "First_Response_At__c"} <= marked[i] for i in ids)

    # Re-delivered, the batch adds nothing, and the poison lead fails again on its own.
    again = processor.process(batch)
    assert again["templates"]["failed_lead_ids"] == [poison_id]
    assert again["templates"]["memoized"] == 59
    assert len(ledger.decisions_between(workload="outreach_template")) == 59
    assert [d.replay_id for d in ledger.dead_letters()] == [letter.replay_id]  # kept once


@pytest.mark.postgres
def test_concurrent_runs_on_postgresql_route_each_lead_once(postgres_url: str) -> None:
    """Two runs (own engines, own threads) route overlapping batches at the same time: every
    lead gets one decision and the pool advances once per lead, never twice for the same.
    (The pool row lock itself is shown failing-without in
    kpi_pipeline_tests/adapters/ledger/test_state.py::test_pool_locks_serialise_concurrent_runs.)"""
    import threading

    # Big enough batches that the two routing transactions overlap in time.
    leads = [lead_created(f"00Q000000000{n:03d}AAA", T0 + n * MINUTE) for n in range(1, 301)]
    batches = [leads[:200], leads[100:]]  # leads 101..200 are delivered to both runs
    ledgers = [Ledger.from_url(postgres_url) for _ in batches]
    # A first lead creates the pool rows, so the two runs below race on existing rows.
    make_processor(ledgers[0]).process([lead_created("00Q000000000000AAA", T0)])
    errors: list[BaseException] = []

    def run(ledger: Ledger, batch: list[ChangeEvent]) -> None:
        try:
            processor = make_processor(ledger)
            processor.apply_records(batch)
            processor.route_leads(processor.select_routing(batch))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=pair) for pair in zip(ledgers, batches, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    try:
        decisions = ledgers[0].decisions_between(workload="lead_route")
        assert sorted(d.lead_id for d in decisions) == sorted(
            ["00Q000000000000AAA", *(e.record_ids[0] for e in leads)]
        )
        pool = ledgers[0].pool_states()["smb"]
        # one UTC day: a lost pool update would show up as fewer than 301 assignments
        assert sorted(pool.assigned_today.values()) == [100, 100, 101]
        assert pool.pointer == 301 % 3
        routing_updates = [r for r in ledgers[0].outbox() if "OwnerId" in r.dirty]
        assert len(routing_updates) == 301  # one routing update per lead
    finally:
        for ledger in ledgers:
            ledger.dispose()


# --- routing judged at event time; a person's reassignment wins --------------------------


def _live_processor(ledger: Ledger) -> BatchProcessor:
    from datetime import UTC, datetime

    return BatchProcessor(
        ledger,
        make_processor(ledger).policy,
        selector=LocalRanker(),
        catalog=load_catalog(),
        client_id=CLIENT_ID,
        clock=lambda: datetime.now(UTC),  # the live job's wall clock
    )


@pytest.mark.parametrize("order", ["in_order", "retried_after_the_rep"])
def test_a_reps_reassignment_wins_and_routing_does_not_depend_on_run_order(
    new_ledger: NewLedger, order: str
) -> None:
    ledger = new_ledger()
    processor = _live_processor(ledger)
    lead = "00Q000000000001AAA"
    created = lead_created(lead, T0)  # in a queue: needs routing
    taken = event("Lead", lead, "UPDATE", T0 + 2 * MINUTE, user=REP_A, OwnerId=REP_A)
    batches = [[created], [taken]] if order == "in_order" else [[taken], [created]]
    for batch in batches:
        processor.process(batch)

    routes = ledger.decisions_between(workload="lead_route")
    (decision,) = [d for d in routes if d.rule_id == "smb-default"]
    assert decision.lead_id == lead  # routed exactly once, whatever the order
    row = facts(ledger, lead)
    assert row.OwnerId == REP_A  # the rep's owner stands in the ledger
    assert "OwnerId" not in outgoing(ledger, lead)  # and is never overwritten in the org
    assert outgoing(ledger, lead)["Routing_Rule__c"] == "smb-default"
    superseded = [d.response["owner_id"] for d in routes if d.rule_id == "superseded"]
    if order == "in_order":
        # Decided before the rep's change was known: the drain drops the owner write when
        # it reads the ledger, and records the supersession then.
        assert superseded == []
        (row,) = ledger.outbox(record_id=lead)
        claim = Claim(row.id, row.sobject, row.record_id, tuple(row.dirty), 0, "", row.confirmed)
        dropped = resolve_from_ledger(ledger, [claim], processor.owner_rules).superseded
        assert [s.actual_owner for s in dropped] == [REP_A]
    else:
        assert superseded == [REP_A]  # known when deciding: recorded at once


def test_our_own_echo_is_not_a_person_taking_the_lead(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    processor = _live_processor(ledger)
    lead = "00Q000000000001AAA"
    processor.process([lead_created(lead, T0)])
    owner = facts(ledger, lead).OwnerId
    echo = event(
        "Lead",
        lead,
        "UPDATE",
        T0 + MINUTE,
        user=INTEGRATION_USER,
        origin="com/salesforce/api/rest/64.0;client=kpi_pipeline",
        OwnerId=owner,
    )
    processor.process([echo])
    assert facts(ledger, lead).OwnerId == owner
    routes = ledger.decisions_between(workload="lead_route")
    assert [d.rule_id for d in routes] == ["smb-default"]
