"""Avro payload -> ``ChangeEvent``: writer schema by schema id, header bitmaps -> field names.

Schemas are cached **per schema id**, never per topic: a topic's schema changes when a
field is added, and events written with the old schema keep their old id. A caller that
holds the schema text itself (a staged batch carries the schemas staged with it) passes it
to ``decode``: that text is what the event is read with, nothing is fetched, and whatever
the fetch cache holds for the id does not matter.

Header bitmaps are decoded leniently, like the reference decoders: an element that maps to
nothing in the writer schema is skipped, counted (``errors_total{area="cdc_bitmap"}``) and
logged with the schema id, and the event goes on. Fields listed in ``diffFields`` carry a
diff (``--- / +++`` text), not a value: they are reported changed and their value is left
out, so a diff is never stored as the field's value.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro

from kpi_pipeline.core.bitmaps import BitmapError, FieldLayout, decode_bitmap
from kpi_pipeline.core.errors import PayloadDecodeError, UnknownSchemaError
from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.telemetry.metrics import record_error

log = logging.getLogger(__name__)
_BITMAP_CACHE_LIMIT = 4096  # distinct bitmap arrays per schema; real traffic has few


@dataclass(slots=True)
class _DecodedSchema:
    schema_id: str
    parsed: Any
    layout: FieldLayout
    compound_names: frozenset[str]
    # tuple(bitmap elements) -> (field names, reasons of skipped elements); bitmaps repeat a
    # lot, so each is decoded once
    bitmap_cache: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]]
    logged_skips: set[str] = field(default_factory=set)

    def names(self, elements: list[str], raw: RawEvent, header_field: str) -> tuple[str, ...]:
        if not elements:
            return ()
        key = tuple(elements)
        cached = self.bitmap_cache.get(key)
        if cached is None:
            skipped: list[str] = []
            names = decode_bitmap(key, self.layout, on_skip=lambda _e, why: skipped.append(why))
            cached = (names, tuple(skipped))
            if len(self.bitmap_cache) < _BITMAP_CACHE_LIMIT:
                self.bitmap_cache[key] = cached
        names, skipped_reasons = cached
        for reason in skipped_reasons:
            record_error("cdc_bitmap")  # once per event that carries it
            if reason not in self.logged_skips:  # the log line once per schema and element
                self.logged_skips.add(reason)
                log.warning(
                    "skipped a %s element of the event on %s at replay id %s: %s; schema %s "
                    "has no field there (the reference decoders skip it too); the rest of the "
                    "event is processed",
                    header_field,
                    raw.channel,
                    raw.replay_id.hex(),
                    reason,
                    self.schema_id,
                )
        return names


class EventDecoder:
    """Decodes ``RawEvent``s; ``fetch_schema(schema_id) -> schema JSON`` is called once per id.

    ``keep``: how many events ``decode_and_keep`` may hold for a later ``decode`` of the
    same raw event, which takes it instead of decoding again. The stream worker decodes
    every event twice in one process, to stage it (its commit time) and to process it
    after reading it back from the ledger inbox; decoding was about 13 % of its main
    thread in a catch-up, 8 % the second decode (bench/RESULTS.md, Catch-up). A raw event is
    the same value on both sides (channel, replay id, schema id, event id, payload), and a
    schema id names one schema, so the kept event is the one a second decode would build."""

    def __init__(self, fetch_schema: Callable[[str], str], *, keep: int = 0) -> None:
        self._fetch_schema = fetch_schema
        self._schemas: dict[str, _DecodedSchema] = {}
        # (schema id, schema text) -> parsed: schemas handed in with the events (staged ones)
        self._given: dict[tuple[str, str], _DecodedSchema] = {}
        self._keep = keep
        # Oldest first; a kept event nobody took (its batch was staged by an earlier
        # generation, or failed to stage) is dropped once ``keep`` newer ones wait.
        self._kept: dict[RawEvent, ChangeEvent] = {}

    @property
    def kept(self) -> int:
        """Events kept by ``decode_and_keep`` that no ``decode`` has taken yet."""
        return len(self._kept)

    def decode_and_keep(self, raw: RawEvent) -> ChangeEvent:
        """``decode(raw)``, and the event kept for the next ``decode`` of ``raw``."""
        event = self.decode(raw)
        if self._keep:
            if len(self._kept) >= self._keep:
                del self._kept[next(iter(self._kept))]
            self._kept[raw] = event
        return event

    def _schema(self, schema_id: str, text: str | None = None) -> _DecodedSchema:
        if text is not None:
            given = self._given.get((schema_id, text))
            if given is None:
                given = self._parse(schema_id, text)
                self._given[(schema_id, text)] = given
            return given
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        try:
            text = self._fetch_schema(schema_id)
        except KeyError as exc:  # a dict-backed fetcher (tests, recorded schemas)
            raise UnknownSchemaError(f"schema id {schema_id!r} is unknown: {exc}") from exc
        decoded = self._parse(schema_id, text)
        self._schemas[schema_id] = decoded
        return decoded

    @staticmethod
    def _parse(schema_id: str, text: str) -> _DecodedSchema:
        try:
            schema = json.loads(text)
            parsed = fastavro.parse_schema(schema)
            layout = FieldLayout.from_schema(schema)
        except (ValueError, TypeError, BitmapError, fastavro.schema.SchemaParseException) as exc:
            raise UnknownSchemaError(
                f"schema {schema_id!r} from the server is not a usable Avro record schema: {exc}"
            ) from exc
        compounds = frozenset(layout.names[i] for i in layout.compounds)
        return _DecodedSchema(schema_id, parsed, layout, compounds, {})

    def decode(self, raw: RawEvent, schema_json: str | None = None) -> ChangeEvent:
        """One event, read with ``schema_json`` when given (its writer schema, e.g. the one
        staged with its batch), else with the schema fetched (once) for its id.
        ``UnknownSchemaError`` / ``PayloadDecodeError`` name what failed."""
        if self._kept:
            kept = self._kept.pop(raw, None)
            if kept is not None:
                return kept
        schema = self._schema(raw.schema_id, schema_json)
        try:
            buffer = io.BytesIO(raw.payload)
            record = fastavro.schemaless_reader(buffer, schema.parsed, None)
            if buffer.tell() != len(raw.payload):
                raise ValueError(
                    f"{len(raw.payload) - buffer.tell()} trailing bytes after the record"
                )
            h = record["ChangeEventHeader"]
            diff_fields = schema.names(h["diffFields"], raw, "diffFields")
            changed_fields = schema.names(h["changedFields"], raw, "changedFields")
            # A diffFields field changed even if changedFields leaves it out.
            changed_fields += tuple(n for n in diff_fields if n not in changed_fields)
            header = ChangeEventHeader(
                entity_name=h["entityName"],
                record_ids=tuple(h["recordIds"]),
                change_type=h["changeType"],
                change_origin=h["changeOrigin"] or "",
                transaction_key=h["transactionKey"] or "",
                sequence_number=h["sequenceNumber"],
                commit_timestamp=h["commitTimestamp"],
                commit_number=h["commitNumber"],
                commit_user=h["commitUser"] or "",
                nulled_fields=schema.names(h["nulledFields"], raw, "nulledFields"),
                diff_fields=diff_fields,
                changed_fields=changed_fields,
            )
        except (EOFError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise PayloadDecodeError(
                channel=raw.channel,
                replay_id=raw.replay_id,
                schema_id=raw.schema_id,
                cause=f"{type(exc).__name__}: {exc}",
            ) from exc
        return ChangeEvent(
            channel=raw.channel,
            replay_id=raw.replay_id,
            header=header,
            fields=_body_fields(
                record, header.nulled_fields, header.diff_fields, schema.compound_names
            ),
            schema_id=raw.schema_id,
            event_id=raw.event_id,
        )


def _body_fields(
    record: dict[str, Any],
    nulled: tuple[str, ...],
    diffs: tuple[str, ...],
    compounds: frozenset[str],
) -> dict[str, Any]:
    """Non-null body fields plus explicit None for nulled ones (also inside compounds);
    ``diffFields`` fields are left out: their body value is a diff, not the field's value."""
    fields: dict[str, Any] = {}
    for name, value in record.items():
        if value is None or name == "ChangeEventHeader":
            continue
        if name in compounds and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        fields[name] = value
    for name in diffs:
        parent, dot, child = name.partition(".")
        if not dot:
            fields.pop(name, None)
        elif isinstance(fields.get(parent), dict):
            fields[parent].pop(child, None)
    for name in nulled:
        parent, dot, child = name.partition(".")
        if not dot:
            fields[name] = None
            continue
        compound = fields.get(parent)
        if not isinstance(compound, dict):
            compound = {}
            fields[parent] = compound
        compound[child] = None
    return fields
