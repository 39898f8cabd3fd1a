"""Avro schemas, the server-side encoder and EventDecoder (Avro + bitmaps -> ChangeEvent)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import astuple

import avro.io
import avro.schema
import pytest

from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.adapters.pubsub.schemas import (
    SCHEMA_IDS_BY_ENTITY,
    SCHEMAS_BY_ENTITY,
    schema_id_for,
    schema_json,
)
from kpi_pipeline.core.errors import PayloadDecodeError, UnknownSchemaError
from kpi_pipeline.core.events import EventFormatError, replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.core.salesforce_fields import WRITTEN_FIELD_NAMES
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import encode_change
from kpi_pipeline.telemetry import metrics

TS = 1_790_000_000_000


def change(entity: str, header: dict, fields: dict, replay: int = 7) -> StoredChange:
    header = {"entityName": entity, "commitTimestamp": TS, **header}
    return StoredChange(replay, entity, header, fields, TS)


def raw(stored: StoredChange, channel: str = "/data/LeadChangeEvent") -> RawEvent:
    schema_id, payload = encode_change(stored)
    return RawEvent(channel, replay_id_from_int(stored.replay), schema_id, payload, "evt-1")


@pytest.mark.parametrize("entity", ["Lead", "Task", "EmailMessage", "Contact"])
def test_schemas_have_the_change_event_shape(entity: str) -> None:
    schema = SCHEMAS_BY_ENTITY[entity]
    assert schema["name"] == f"{entity}ChangeEvent" and schema["namespace"] == "com.sforce.eventbus"
    header = schema["fields"][0]
    assert header["name"] == "ChangeEventHeader"
    header_fields = [f["name"] for f in header["type"]["fields"]]
    assert header_fields == [
        "entityName", "recordIds", "changeType", "changeOrigin", "transactionKey",
        "sequenceNumber", "commitTimestamp", "commitNumber", "commitUser",
        "nulledFields", "diffFields", "changedFields",
    ]  # fmt: skip
    change_type = header["type"]["fields"][2]["type"]
    assert change_type["type"] == "enum" and "GAP_OVERFLOW" in change_type["symbols"]
    for body_field in schema["fields"][1:]:
        assert body_field["type"][0] == "null" and body_field["default"] is None
    # The plain Apache avro library accepts the JSON GetSchema serves.
    assert avro.schema.parse(schema_json(SCHEMA_IDS_BY_ENTITY[entity])).fullname == (
        f"com.sforce.eventbus.{entity}ChangeEvent"
    )


def test_lead_schema_carries_the_written_custom_fields() -> None:
    names = {f["name"] for f in SCHEMAS_BY_ENTITY["Lead"]["fields"]}
    assert set(WRITTEN_FIELD_NAMES) <= names
    assert {"Name", "Address", "OwnerId", "IsConverted", "CreatedDate"} <= names


def test_schema_ids_are_deterministic_22_char_url_safe_fingerprints() -> None:
    ids = set(SCHEMA_IDS_BY_ENTITY.values())
    assert len(ids) == len(SCHEMAS_BY_ENTITY) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    lead = json.loads(json.dumps(SCHEMAS_BY_ENTITY["Lead"]))
    assert schema_id_for(lead) == SCHEMA_IDS_BY_ENTITY["Lead"]
    lead["fields"].append({"name": "Website", "type": ["null", "string"], "default": None})
    assert schema_id_for(lead) != SCHEMA_IDS_BY_ENTITY["Lead"]  # adding a field = new id
    with pytest.raises(UnknownSchemaError, match="'nope' is unknown"):
        schema_json("nope")


def test_lead_update_decodes_with_nulled_and_compound_fields() -> None:
    stored = change(
        "Lead",
        {
            "recordIds": ["00Q000000000001AAA"],
            "changeType": "UPDATE",
            "changeOrigin": "com/salesforce/api/rest/62.0;client=kpi_pipeline",
            "transactionKey": "tx-1",
            "sequenceNumber": 1,
            "commitNumber": 12345678901234,
            "commitUser": "005000000000001AAA",
            # REST-style child names are qualified by the encoder (City -> Address.City).
            "changedFields": ["Status", "City", "LastModifiedDate", "Title"],
            "nulledFields": ["Title", "Address.Street"],
        },
        {"Status": "Working", "City": "Lyon", "LastModifiedDate": "2026-09-21T10:00:00Z"},
    )
    event = EventDecoder(schema_json).decode(raw(stored))
    h = event.header
    assert (h.entity_name, h.change_type, h.record_ids) == (
        "Lead",
        "UPDATE",
        ("00Q000000000001AAA",),
    )
    assert (h.transaction_key, h.sequence_number, h.commit_number) == ("tx-1", 1, 12345678901234)
    assert h.commit_timestamp == TS and event.origin_client() == "kpi_pipeline"
    assert set(h.changed_fields) == {"Status", "Address.City", "LastModifiedDate", "Title"}
    assert set(h.nulled_fields) == {"Title", "Address.Street"}
    assert event.fields == {
        "Status": "Working",
        "Address": {"City": "Lyon", "Street": None},
        "LastModifiedDate": 1789984800000,  # ISO input stored as epoch ms (date -d)
        "Title": None,
    }
    assert event.replay_id == replay_id_from_int(7) and event.event_id == "evt-1"


def test_task_and_email_message_create_decode() -> None:
    decoder = EventDecoder(schema_json)
    task = decoder.decode(
        raw(
            change(
                "Task",
                {"recordIds": ["00T1"], "changeType": "CREATE"},
                {"Subject": "Call", "WhoId": "00Q1", "IsClosed": True, "CompletedDateTime": TS},
            ),
            "/data/TaskChangeEvent",
        )
    )
    assert task.entity == "Task" and task.change_type == "CREATE"
    assert task.fields == {
        "Subject": "Call",
        "WhoId": "00Q1",
        "IsClosed": True,
        "CompletedDateTime": TS,
    }
    email = decoder.decode(
        raw(
            change(
                "EmailMessage",
                {"recordIds": ["02s1"], "changeType": "CREATE"},
                {
                    "Incoming": False,
                    "RelatedToId": "00Q1",
                    "EmailTemplateId": "00X1",
                    "MessageDate": TS,
                },
            ),
            "/data/EmailMessageChangeEvent",
        )
    )
    assert email.fields["Incoming"] is False and email.fields["EmailTemplateId"] == "00X1"
    assert email.datetime_field("MessageDate").timestamp() == TS / 1000


def test_gap_overflow_has_header_only() -> None:
    stored = change("Lead", {"recordIds": ["000000000000000AAA"], "changeType": "GAP_OVERFLOW"}, {})
    event = EventDecoder(schema_json).decode(raw(stored))
    assert event.is_overflow and event.fields == {}


def test_schema_is_fetched_once_per_schema_id_not_per_topic() -> None:
    fetched: list[str] = []

    def fetch(schema_id: str) -> str:
        fetched.append(schema_id)
        return schema_json(schema_id)

    decoder = EventDecoder(fetch)
    lead = change("Lead", {"recordIds": ["00Q1"], "changeType": "CREATE"}, {"Company": "A"})
    task = change("Task", {"recordIds": ["00T1"], "changeType": "CREATE"}, {"Subject": "S"})
    for channel in ("/data/LeadChangeEvent", "/data/SalesKpis__chn", "/data/ChangeEvents"):
        decoder.decode(raw(lead, channel))
    decoder.decode(raw(task, "/data/SalesKpis__chn"))  # same topic, different schema
    assert fetched == [SCHEMA_IDS_BY_ENTITY["Lead"], SCHEMA_IDS_BY_ENTITY["Task"]]


def test_an_event_decoded_and_kept_is_taken_by_the_next_decode_of_the_same_raw_event() -> None:
    decoder = EventDecoder(schema_json, keep=10)
    lead = raw(change("Lead", {"recordIds": ["00Q1"], "changeType": "CREATE"}, {"Company": "A"}))
    staged = decoder.decode_and_keep(lead)
    # The same value read back from the ledger inbox: a new RawEvent, equal to the first.
    again = RawEvent(lead.channel, lead.replay_id, lead.schema_id, bytes(lead.payload), "evt-1")
    # Taken, not decoded: the schema text handed in here is never read.
    assert decoder.decode(again, "not a schema") is staged
    # Taken once: the next decode decodes again (an equal event, a new object).
    with pytest.raises(UnknownSchemaError):
        decoder.decode(again, "not a schema")
    assert decoder.decode(again) == staged and decoder.decode(again) is not staged


def test_a_raw_event_that_differs_in_anything_is_decoded_afresh() -> None:
    decoder = EventDecoder(schema_json, keep=10)
    lead = raw(change("Lead", {"recordIds": ["00Q1"], "changeType": "CREATE"}, {"Company": "A"}))
    staged = decoder.decode_and_keep(lead)
    other_channel = RawEvent("/data/ChangeEvents", *astuple(lead)[1:])
    other_id = RawEvent(*astuple(lead)[:4], "evt-2")
    for different in (other_channel, other_id):
        assert decoder.decode(different) is not staged
    assert decoder.decode(lead) is staged


def test_kept_events_are_bounded_oldest_dropped_first_and_none_kept_by_default() -> None:
    events = [
        raw(change("Lead", {"recordIds": [f"00Q{n}"], "changeType": "CREATE"}, {}, replay=n))
        for n in range(1, 4)
    ]
    bounded = EventDecoder(schema_json, keep=2)
    first, second, third = (bounded.decode_and_keep(e) for e in events)
    assert bounded.decode(events[0]) is not first  # dropped when the third was kept
    assert bounded.decode(events[1]) is second and bounded.decode(events[2]) is third
    by_default = EventDecoder(schema_json)
    kept = by_default.decode_and_keep(events[0])
    assert by_default.decode(events[0]) is not kept


def test_unknown_schema_id_is_a_typed_error() -> None:
    event = RawEvent(
        "/data/LeadChangeEvent", replay_id_from_int(1), "AAAAAAAAAAAAAAAAAAAAAA", b"\x00"
    )
    with pytest.raises(UnknownSchemaError, match="AAAAAAAAAAAAAAAAAAAAAA"):
        EventDecoder(schema_json).decode(event)


@pytest.mark.parametrize("payload", [b"", b"\x08Le", b"\xff" * 40])
def test_undecodable_payload_names_channel_replay_schema_and_fix(payload: bytes) -> None:
    event = RawEvent(
        "/data/LeadChangeEvent", replay_id_from_int(258), SCHEMA_IDS_BY_ENTITY["Lead"], payload
    )
    with pytest.raises(PayloadDecodeError) as info:
        EventDecoder(schema_json).decode(event)
    text = str(info.value)
    assert "/data/LeadChangeEvent" in text and "0000000000000102" in text
    assert SCHEMA_IDS_BY_ENTITY["Lead"] in text and "Fix:" in text


def test_payload_written_with_another_schema_is_rejected() -> None:
    # A Task payload labelled with the Lead schema id: bytes left over or bad values.
    task = change("Task", {"recordIds": ["00T1"], "changeType": "CREATE"}, {"Subject": "S"})
    _, payload = encode_change(task)
    event = RawEvent(
        "/data/LeadChangeEvent", replay_id_from_int(3), SCHEMA_IDS_BY_ENTITY["Lead"], payload
    )
    with pytest.raises(PayloadDecodeError):
        EventDecoder(schema_json).decode(event)


def test_plain_avro_library_reads_what_the_encoder_wrote() -> None:
    stored = change(
        "Lead",
        {"recordIds": ["00Q1"], "changeType": "CREATE"},
        {"FirstName": "Ada", "NumberOfEmployees": 12},
    )
    schema_id, payload = encode_change(stored)
    reader = avro.io.DatumReader(avro.schema.parse(schema_json(schema_id)))
    record = reader.read(avro.io.BinaryDecoder(io.BytesIO(payload)))
    assert record["Name"]["FirstName"] == "Ada" and record["NumberOfEmployees"] == 12
    assert record["ChangeEventHeader"]["changeType"] == "CREATE"


def test_encoder_names_a_field_missing_from_the_schema() -> None:
    stored = change("Lead", {"recordIds": ["00Q1"], "changeType": "CREATE"}, {"Shoe_Size__c": 42})
    with pytest.raises(
        EventFormatError, match="'Shoe_Size__c' is not in the LeadChangeEvent schema"
    ):
        encode_change(stored)
    bad_type = change(
        "Lead", {"recordIds": ["00Q1"], "changeType": "CREATE"}, {"NumberOfEmployees": "many"}
    )
    with pytest.raises(EventFormatError, match="does not fit LeadChangeEvent"):
        encode_change(bad_type)


# --- real-org shapes and lenient decoding -----------------------------------------------------


def test_docs_are_in_salesforces_form() -> None:
    lead = {f["name"]: f.get("doc") for f in SCHEMAS_BY_ENTITY["Lead"]["fields"]}
    assert lead["Status"] == "Data:DynamicEnum" and lead["OwnerId"] == "Data:EntityId"
    assert lead["CreatedDate"] == "CreatedDate:DateTime"
    assert lead["LastModifiedById"] == "LastModifiedBy:EntityId"
    assert lead["Name"] == "Data:Switchable_PersonName" and lead["Address"] == "Data:Address"
    assert re.fullmatch(r"Data:DateTime:00N[0-9A-Za-z]{12}", lead["First_Response_At__c"])
    assert lead["ConvertedDate"] == "Data:DateOnly" and lead["AnnualRevenue"] == "Data:Currency"


def contact_update(**header: object) -> StoredChange:
    return change(
        "Contact",
        {"recordIds": ["003000000000001AAA"], "changeType": "UPDATE", **header},
        {"OtherAddress": {"City": "Nantes", "State": "Loire"}, "Title": "CFO"},
    )


def test_contact_second_address_is_a_named_reference_and_decodes_end_to_end() -> None:
    stored = contact_update(changedFields=["OtherAddress.City", "OtherAddress.State", "Title"])
    schema_id, _ = encode_change(stored)
    served = json.loads(schema_json(schema_id))
    types = {f["name"]: f["type"] for f in served["fields"]}
    assert types["MailingAddress"][1]["name"] == "Address" and types["OtherAddress"][1] == "Address"
    header = decode_header_bitmaps(raw(stored, "/data/Contacts__chn"))
    other = [f["name"] for f in served["fields"]].index("OtherAddress")
    assert f"{other}-0x06" in header["changedFields"]  # what a real org sends
    event = EventDecoder(schema_json).decode(raw(stored, "/data/Contacts__chn"))
    assert set(event.header.changed_fields) == {"OtherAddress.City", "OtherAddress.State", "Title"}
    assert event.fields == {"OtherAddress": {"City": "Nantes", "State": "Loire"}, "Title": "CFO"}


def decode_header_bitmaps(event: RawEvent) -> dict:
    schema = avro.schema.parse(schema_json(event.schema_id))
    record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(event.payload)))
    return record["ChangeEventHeader"]


def rewrite_header(event: RawEvent, **bitmaps: list[str]) -> RawEvent:
    """The same event with its header bitmaps replaced (what a newer schema version sends)."""
    schema = avro.schema.parse(schema_json(event.schema_id))
    record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(event.payload)))
    record["ChangeEventHeader"].update(bitmaps)
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(out))
    return RawEvent(event.channel, event.replay_id, event.schema_id, out.getvalue(), event.event_id)


def bitmap_errors() -> float:
    return metrics.sample_value("errors_total", {"area": "cdc_bitmap"})


def test_an_unmappable_element_is_skipped_counted_and_logged_and_the_event_decodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = contact_update(changedFields=["Title"])
    title_bit = [f["name"] for f in SCHEMAS_BY_ENTITY["Contact"]["fields"]].index("Title")
    # "2-0x01": field 2 (AccountId) is not a compound in this schema.
    event = rewrite_header(
        raw(stored, "/data/Contacts__chn"), changedFields=[f"0x{1 << title_bit:X}", "2-0x01"]
    )
    before = bitmap_errors()
    decoder = EventDecoder(schema_json)
    with caplog.at_level("WARNING", logger="kpi_pipeline.adapters.pubsub.decode"):
        decoded = decoder.decode(event)
        again = decoder.decode(event)  # the same bitmap, served from the cache
    assert decoded.header.changed_fields == again.header.changed_fields == ("Title",)
    assert decoded.fields["Title"] == "CFO"
    assert bitmap_errors() == before + 2  # counted per event
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # logged once per schema and element
    assert event.schema_id in warnings[0] and "'2-0x01'" in warnings[0]


def test_diff_fields_mark_the_field_changed_but_never_deliver_the_diff_as_its_value() -> None:
    stored = change(
        "Task",
        {"recordIds": ["00T000000000001AAA"], "changeType": "UPDATE", "changedFields": ["Status"]},
        {"Status": "Completed", "Description": "--- \n+++ \n@@ -1 +1 @@\n-old\n+new"},
    )
    fields = [f["name"] for f in SCHEMAS_BY_ENTITY["Task"]["fields"]]
    diff = f"0x{1 << fields.index('Description'):X}"
    event = EventDecoder(schema_json).decode(
        rewrite_header(raw(stored, "/data/TaskChangeEvent"), diffFields=[diff])
    )
    assert event.header.diff_fields == ("Description",)
    assert set(event.header.changed_fields) == {"Status", "Description"}
    assert "Description" not in event.fields and event.fields["Status"] == "Completed"
