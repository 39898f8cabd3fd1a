"""The sandbox org's schema set and the encoder of its stored changes (what GetSchema serves
and what Subscribe sends).

``SchemaSet`` is the default schemas of ``kpi_pipeline.adapters.pubsub.schemas`` plus the custom fields
an org added (``SandboxStore.add_custom_field``, as an admin adds one in Setup): a custom
field goes at the end of its entity's schema, which then has a new schema id, as on a real
org. Ids of the default schemas stay resolvable, so events fetched before the change still
decode. ``encode_change`` turns a ``StoredChange`` into (schema id, schemaless Avro payload).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import fastavro

from kpi_pipeline.adapters.pubsub.schemas import (
    BITMAP_HEADER_FIELDS,
    NOT_IN_CDC,
    SCHEMAS_BY_ENTITY,
    canonical_json,
    custom_field,
    schema_id_for,
)
from kpi_pipeline.core.bitmaps import BitmapError, FieldLayout, encode_bitmap
from kpi_pipeline.core.errors import UnknownSchemaError
from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime, to_epoch_ms
from kpi_pipeline.core.schema_types import sf_type_of
from kpi_pipeline.sandbox.changelog import StoredChange


@dataclass(frozen=True)
class SchemaSet:
    """The change-event schemas one sandbox org serves. Hashable: codecs are cached per set."""

    # (entity, field API name, sandbox type such as "Text" or "Number"), in the order added
    custom_fields: tuple[tuple[str, str, str], ...] = ()

    def with_custom_field(self, entity: str, name: str, sandbox_type: str) -> SchemaSet:
        if entity not in SCHEMAS_BY_ENTITY:
            raise ValueError(
                f"cannot add {name!r} to {entity!r}: the sandbox org has change events for "
                f"{sorted(SCHEMAS_BY_ENTITY)} only"
            )
        custom_field(name, sandbox_type)  # validates name and type
        if any(f["name"] == name for f in self.schemas[entity]["fields"]):
            raise ValueError(f"{entity} already has a field {name!r}")
        return SchemaSet((*self.custom_fields, (entity, name, sandbox_type)))

    @cached_property
    def schemas(self) -> dict[str, dict[str, Any]]:
        """Entity -> its change-event schema as this org serves it."""
        out = dict(SCHEMAS_BY_ENTITY)
        for entity, name, sandbox_type in self.custom_fields:
            schema = copy.deepcopy(out[entity])
            schema["fields"].append(custom_field(name, sandbox_type))
            out[entity] = schema
        return out

    @cached_property
    def ids(self) -> dict[str, str]:
        return {entity: schema_id_for(schema) for entity, schema in self.schemas.items()}

    @cached_property
    def _by_id(self) -> dict[str, dict[str, Any]]:
        served = {schema_id_for(s): s for s in SCHEMAS_BY_ENTITY.values()}
        served.update({self.ids[e]: s for e, s in self.schemas.items()})
        return served

    def schema_id(self, entity: str) -> str:
        return self.ids[entity]

    def schema_json(self, schema_id: str) -> str:
        """The Avro schema JSON GetSchema serves; ``UnknownSchemaError`` for unknown ids."""
        schema = self._by_id.get(schema_id)
        if schema is None:
            raise UnknownSchemaError(
                f"schema id {schema_id!r} is unknown; known ids: {sorted(self._by_id)}"
            )
        return canonical_json(schema)


DEFAULT_SCHEMAS = SchemaSet()


class _EntityCodec:
    """Everything needed to encode one entity's changes, built once per entity and set."""

    def __init__(self, entity: str, schema: dict[str, Any], schema_id: str) -> None:
        self.entity = entity
        self.schema_id = schema_id
        self.parsed = fastavro.parse_schema(schema)
        self.layout = FieldLayout.from_schema(schema)
        self.body_names = set(self.layout.names[1:])
        self.datetime_names = {
            f["name"] for f in schema["fields"][1:] if sf_type_of(f) in ("DateTime", "Date")
        }
        # bare child name (REST style: FirstName, City) -> compound parent name, for the
        # children of exactly one compound (Contact's City could be either address: callers
        # name it MailingAddress.City)
        parents: dict[str, list[str]] = {}
        for index, children in self.layout.compounds.items():
            for child in children:
                parents.setdefault(child, []).append(self.layout.names[index])
        self.child_parent = {c: ps[0] for c, ps in parents.items() if len(ps) == 1}

    def qualify(self, name: str) -> str:
        """Header field names: ``FirstName`` -> ``Name.FirstName`` (compound children)."""
        parent = self.child_parent.get(name)
        return f"{parent}.{name}" if parent and name not in self.body_names else name

    def body(self, change: StoredChange) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for name, value in change.fields.items():
            if name in NOT_IN_CDC:
                continue
            parent, _, child = self.qualify(name).partition(".")
            if parent not in self.body_names:
                raise EventFormatError(
                    f"{self.entity} change at replay {change.replay}: field {name!r} is not in "
                    f"the {self.entity}ChangeEvent schema; add it to kpi_pipeline/adapters/pubsub/schemas.py "
                    "(or as a custom field: SandboxStore.add_custom_field) or stop writing it"
                )
            if child:
                record.setdefault(parent, {})[child] = value
            elif isinstance(value, Mapping):
                record.setdefault(parent, {}).update(value)
            else:
                record[parent] = self._coerce(name, value)
        return record

    def _coerce(self, name: str, value: Any) -> Any:
        if name in self.datetime_names and isinstance(value, str):
            parsed = parse_sf_datetime(value)
            return to_epoch_ms(parsed) if parsed else None
        return value

    def header(self, change: StoredChange) -> dict[str, Any]:
        h = change.header
        header = {
            "entityName": h.get("entityName") or self.entity,
            "recordIds": list(h.get("recordIds") or ()),
            "changeType": h.get("changeType"),
            "changeOrigin": h.get("changeOrigin") or "",
            "transactionKey": h.get("transactionKey") or "",
            "sequenceNumber": int(h.get("sequenceNumber") or 0),
            "commitTimestamp": int(h.get("commitTimestamp") or change.commit_timestamp),
            "commitNumber": int(h.get("commitNumber") or 0),
            "commitUser": h.get("commitUser") or "",
        }
        for key in BITMAP_HEADER_FIELDS:
            names = [self.qualify(n) for n in h.get(key) or ()]
            try:
                header[key] = encode_bitmap(names, self.layout)
            except BitmapError as exc:
                raise EventFormatError(
                    f"{self.entity} change at replay {change.replay}: header {key}: {exc}"
                ) from exc
        return header


@cache
def _codec(entity: str, schemas: SchemaSet) -> _EntityCodec:
    schema = schemas.schemas.get(entity)
    if schema is None:
        raise EventFormatError(
            f"entity {entity!r} has no change-event schema; known: {sorted(schemas.schemas)}"
        )
    return _EntityCodec(entity, schema, schemas.schema_id(entity))


def encode_change(
    stored_change: StoredChange, schemas: SchemaSet = DEFAULT_SCHEMAS
) -> tuple[str, bytes]:
    """(schema id, schemaless Avro payload) of a stored change, as the bus would deliver it."""
    codec = _codec(stored_change.entity, schemas)
    record = codec.body(stored_change)
    record["ChangeEventHeader"] = codec.header(stored_change)
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, codec.parsed, record)
    except (ValueError, TypeError) as exc:
        raise EventFormatError(
            f"{stored_change.entity} change at replay {stored_change.replay} does not fit "
            f"{stored_change.entity}ChangeEvent: {exc}"
        ) from exc
    return codec.schema_id, buffer.getvalue()
