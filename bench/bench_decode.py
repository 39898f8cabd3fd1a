"""CDC decode throughput: ``EventDecoder.decode`` (fastavro) vs the plain ``avro`` library.

Both sides decode the same payloads (written by the sandbox encoder) and do the same
work after Avro: header bitmaps -> field names (same ``decode_bitmap``, same per-schema
memo), body fields with explicit nulls, a ``ChangeEvent``. Only the Avro reader differs.
The two outputs are compared before timing, so the ratio compares equal results.

    python bench/bench_decode.py [--events 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import statistics
import time

import avro
import avro.io
import avro.schema
import fastavro

from kpi_pipeline.adapters.pubsub.decode import EventDecoder, _body_fields
from kpi_pipeline.adapters.pubsub.schemas import schema_json
from kpi_pipeline.core.bitmaps import FieldLayout, decode_bitmap
from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import encode_change

CHANNEL = "/data/SalesKpis__chn"


def synthetic_changes(count: int, seed: int = 7) -> list[StoredChange]:
    """A realistic mix: Lead CREATE (many fields) / UPDATE (bitmaps, nulls), Task, EmailMessage."""
    rng = random.Random(seed)
    ts = 1_790_000_000_000
    out = []
    for replay in range(1, count + 1):
        ts += rng.randint(100, 5000)
        kind = rng.random()
        header = {"recordIds": [f"00Q{replay:015d}"], "commitTimestamp": ts, "transactionKey": f"tx{replay}",
                  "sequenceNumber": 1, "commitNumber": 10_000_000_000 + replay, "commitUser": "005000000000001AAA",
                  "changeOrigin": "com/salesforce/api/rest/62.0;client=sim"}  # fmt: skip
        if kind < 0.3:
            entity, header["changeType"] = "Lead", "CREATE"
            fields = {"FirstName": "Ada", "LastName": f"Lovelace {replay}", "Company": "Analytical Engines",
                      "Email": f"ada{replay}@example.com", "Status": "Open - Not Contacted", "LeadSource": "Web",
                      "Industry": "Technology", "NumberOfEmployees": rng.randint(1, 5000),
                      "AnnualRevenue": rng.random() * 1e7, "City": "London", "Country": "United Kingdom",
                      "CountryCode": "GB", "OwnerId": "00G000000000001AAA", "IsConverted": False,
                      "CreatedDate": ts, "CreatedById": "005000000000001AAA", "LastModifiedDate": ts}  # fmt: skip
        elif kind < 0.5:
            entity, header["changeType"] = "Lead", "UPDATE"
            header["changedFields"] = [
                "OwnerId",
                "Owner_Assigned_At__c",
                "LastModifiedDate",
                "Title",
            ]
            header["nulledFields"] = ["Title"]
            fields = {
                "OwnerId": "005000000000002AAA",
                "Owner_Assigned_At__c": ts,
                "LastModifiedDate": ts,
            }
        elif kind < 0.8:
            entity, header["changeType"] = "Task", "CREATE"
            fields = {"Subject": "Call", "Status": "Completed", "Priority": "Normal", "IsClosed": True,
                      "WhoId": f"00Q{replay:015d}", "OwnerId": "005000000000002AAA", "TaskSubtype": "Call",
                      "CompletedDateTime": ts, "CreatedDate": ts, "CreatedById": "005000000000002AAA"}  # fmt: skip
        else:
            entity, header["changeType"] = "EmailMessage", "CREATE"
            fields = {"Subject": "Hello", "FromAddress": "rep@example.com", "ToAddress": "ada@example.com",
                      "Incoming": False, "MessageDate": ts, "Status": "3", "RelatedToId": f"00Q{replay:015d}",
                      "ActivityId": "00T000000000001AAA", "EmailTemplateId": "00X000000000001AAA",
                      "TextBody": "Hi Ada, " * 40, "CreatedDate": ts}  # fmt: skip
        header["entityName"] = entity
        out.append(StoredChange(replay, entity, header, fields, ts))
    return out


def raw_events(changes: list[StoredChange]) -> list[RawEvent]:
    events = []
    for change in changes:
        schema_id, payload = encode_change(change)
        events.append(RawEvent(CHANNEL, replay_id_from_int(change.replay), schema_id, payload))
    return events


class AvroLibraryDecoder:
    """Baseline: Apache ``avro`` DatumReader/BinaryDecoder, then the same post-Avro steps."""

    def __init__(self) -> None:
        self._readers: dict[str, tuple[avro.io.DatumReader, FieldLayout, frozenset[str], dict]] = {}

    def _schema(
        self, schema_id: str
    ) -> tuple[avro.io.DatumReader, FieldLayout, frozenset[str], dict]:
        if schema_id not in self._readers:
            text = schema_json(schema_id)
            layout = FieldLayout.from_schema(json.loads(text))
            compounds = frozenset(layout.names[i] for i in layout.compounds)
            self._readers[schema_id] = (
                avro.io.DatumReader(avro.schema.parse(text)),
                layout,
                compounds,
                {},
            )
        return self._readers[schema_id]

    def decode(self, raw: RawEvent) -> ChangeEvent:
        reader, layout, compounds, memo = self._schema(raw.schema_id)
        record = reader.read(avro.io.BinaryDecoder(io.BytesIO(raw.payload)))

        def names(elements: list[str]) -> tuple[str, ...]:
            key = tuple(elements)
            if key not in memo:
                memo[key] = decode_bitmap(key, layout)
            return memo[key]

        h = record["ChangeEventHeader"]
        header = ChangeEventHeader(
            entity_name=h["entityName"], record_ids=tuple(h["recordIds"]), change_type=h["changeType"],
            change_origin=h["changeOrigin"], transaction_key=h["transactionKey"],
            sequence_number=h["sequenceNumber"], commit_timestamp=h["commitTimestamp"],
            commit_number=h["commitNumber"], commit_user=h["commitUser"],
            nulled_fields=names(h["nulledFields"]), diff_fields=names(h["diffFields"]),
            changed_fields=names(h["changedFields"]),
        )  # fmt: skip
        return ChangeEvent(raw.channel, raw.replay_id, header,
                           _body_fields(record, header.nulled_fields, header.diff_fields, compounds), raw.schema_id, raw.event_id)  # fmt: skip


def avro_only(decoder: EventDecoder):  # type: ignore[no-untyped-def]
    """Just the Avro read of ``decoder`` (its cached parsed writer schemas), per event."""

    def read(raw: RawEvent) -> object:
        parsed = decoder._schema(raw.schema_id).parsed
        return fastavro.schemaless_reader(io.BytesIO(raw.payload), parsed, None)

    return read


def rate(decode, events: list[RawEvent], repeats: int) -> float:
    """Median events per CPU second over `repeats` passes (CPU time of this process: the
    decode is single-threaded, and CPU time does not count the waits of a shared machine)."""
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        for event in events:
            decode(event)
        timings.append(time.process_time() - started)
    return len(events) / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    events = raw_events(synthetic_changes(args.events))
    ours, baseline = EventDecoder(schema_json), AvroLibraryDecoder()
    for event in events:  # equal outputs (and warm schema caches) before timing
        assert ours.decode(event) == baseline.decode(event), event.replay_id
    mean_bytes = statistics.mean(len(e.payload) for e in events)
    fast = rate(ours.decode, events, args.repeats)
    slow = rate(baseline.decode, events, args.repeats)
    floor = rate(avro_only(ours), events, args.repeats)
    print(
        f"python {platform.python_version()}, fastavro {fastavro.__version__}, avro {avro.__version__}"
    )
    print(
        f"{len(events)} events, mean payload {mean_bytes:.0f} bytes, median of {args.repeats}, "
        "events per CPU second"
    )
    print(f"EventDecoder.decode (fastavro): {fast:,.0f} events/s")
    print(f"avro DatumReader baseline:      {slow:,.0f} events/s")
    print(f"ratio: {fast / slow:.1f}x")
    # The floor: fastavro's own per-record call with the cached parsed schema, nothing else.
    # Even if everything after Avro cost nothing, the ratio could not exceed this.
    print(f"fastavro.schemaless_reader alone:  {floor:,.0f} events/s")
    print(f"ceiling of the ratio (Avro alone vs baseline): {floor / slow:.1f}x")


if __name__ == "__main__":
    main()
