"""The sandbox org's fields: what each sObject has and how values are stored and shown.

Field names and Salesforce types come from the Avro change-event schemas (``EntitySpec``,
built once per schema set). ``normalize_values`` turns a writer's values into the stored
shape (compounds nested, DateTimes in epoch ms) and refuses unknown fields and values of
the wrong type; ``rest_view`` turns a stored record into the REST shape. Both the store and
the REST server use them, so a refused write is refused the same way on either path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from kpi_pipeline.core.bitmaps import FieldLayout
from kpi_pipeline.core.events import (
    EventFormatError,
    format_sf_datetime,
    parse_sf_datetime,
    to_epoch_ms,
)
from kpi_pipeline.core.schema_types import sf_type_of
from kpi_pipeline.sandbox.changelog import ALL_ENTITIES
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.store.errors import (
    FieldValueError,
    SandboxStoreError,
    UnknownFieldError,
)

# Sobjects the store keeps without change events (the org's directory).
DIRECTORY_SOBJECTS = ("User", "Group")
SYSTEM_FIELDS = frozenset({"CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById"})
# Salesforce DateTime/Date fields by API name (same meaning on every sobject here).
DATETIME_FIELDS = frozenset(
    {
        "CreatedDate",
        "LastModifiedDate",
        "CompletedDateTime",
        "MessageDate",
        "Owner_Assigned_At__c",
        "First_Response_At__c",
    }
)
DATE_FIELDS = frozenset({"ActivityDate", "ConvertedDate"})


@dataclass(frozen=True)
class EntitySpec:
    entity: str
    fields: frozenset[str]
    compounds: Mapping[str, tuple[str, ...]]
    child_parent: Mapping[str, str]
    order: Mapping[str, int]
    types: Mapping[str, str]  # field or compound child name -> Salesforce type ("Int", ...)


@cache
def entity_spec(entity: str, schemas: SchemaSet = DEFAULT_SCHEMAS) -> EntitySpec:
    layout = FieldLayout.from_schema(schemas.schemas[entity])
    compounds = {layout.names[i]: children for i, children in layout.compounds.items()}
    parents: dict[str, list[str]] = {}
    for parent, children in compounds.items():
        for child in children:
            parents.setdefault(child, []).append(parent)
    # A bare child name maps to its compound only when one compound has it (Contact's City
    # could be MailingAddress or OtherAddress: pass those as {"MailingAddress": {...}}).
    child_parent = {child: ps[0] for child, ps in parents.items() if len(ps) == 1}
    return EntitySpec(
        entity,
        frozenset(layout.names[1:]),
        compounds,
        child_parent,
        {name: i for i, name in enumerate(layout.names)},
        _sf_types(schemas.schemas[entity]["fields"][1:]),
    )


def _sf_types(fields: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Field types from the schema docs ("Data:Int"), compound children included."""
    out: dict[str, str] = {}
    for spec in fields:
        sf_type = sf_type_of(spec)
        if sf_type and sf_type not in ("Address", "Switchable_PersonName"):
            out[spec["name"]] = sf_type
        for branch in spec["type"] if isinstance(spec["type"], list) else [spec["type"]]:
            if isinstance(branch, Mapping) and branch.get("type") == "record":
                out.update(_sf_types(branch["fields"]))
    return out


_TEXT_TYPES = frozenset({"Text", "Id", "Picklist", "Email", "Phone", "Url", "TextArea", "Lookup"})


def field_type(sobject: str, name: str, schemas: SchemaSet = DEFAULT_SCHEMAS) -> str | None:
    """The Salesforce type ("Int", "Lookup", ...) of a field or compound child, or None."""
    if sobject not in ALL_ENTITIES:
        return None
    return entity_spec(sobject, schemas).types.get(name)


def _check_type(sobject: str, name: str, value: Any, spec: EntitySpec) -> None:
    sf_type = spec.types.get(name)
    if value is None or sf_type is None or sf_type in ("DateTime", "Date"):
        return  # DateTimes and Dates are checked while converting them to epoch ms
    if sf_type == "Boolean":
        fits = isinstance(value, bool)
    elif sf_type == "Int":
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif sf_type in ("Number", "Currency"):
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    else:  # Lookups are strings here; their id shape is checked by the REST server only
        fits = sf_type not in _TEXT_TYPES or isinstance(value, str)
    if not fits:
        raise FieldValueError(
            f"{sobject}.{name} is a {sf_type} field; {value!r} is not a valid value for it",
            sobject=sobject,
            field_name=name,
            sf_type=sf_type,
            value=value,
        )


def check_sobject(sobject: str) -> None:
    if sobject not in ALL_ENTITIES and sobject not in DIRECTORY_SOBJECTS:
        raise SandboxStoreError(
            f"the sandbox org has no sObject {sobject!r}; it keeps {list(ALL_ENTITIES)} "
            f"(with change events) and {list(DIRECTORY_SOBJECTS)}"
        )


def check_entity(entity: str) -> None:
    if entity not in ALL_ENTITIES:
        raise SandboxStoreError(
            f"{entity!r} has no change events in the sandbox org; writable entities: {list(ALL_ENTITIES)}"
        )


def _to_ms(name: str, value: Any, sobject: str = "") -> int | None:
    try:
        parsed = parse_sf_datetime(value)
    except EventFormatError as exc:
        raise FieldValueError(
            f"field {name}: {exc}",
            sobject=sobject,
            field_name=name,
            sf_type="Date" if name in DATE_FIELDS else "DateTime",
            value=value,
        ) from exc
    return None if parsed is None else to_epoch_ms(parsed)


def _coerce(name: str, value: Any, sobject: str = "") -> Any:
    if value is not None and (name in DATETIME_FIELDS or name in DATE_FIELDS):
        return _to_ms(name, value, sobject)
    return value


def normalize_values(
    sobject: str,
    values: Mapping[str, Any],
    *,
    allow_system: bool = False,
    schemas: SchemaSet = DEFAULT_SCHEMAS,
) -> dict[str, Any]:
    """Writer values in the stored shape (compounds nested, DateTimes in ms), validated."""
    check_sobject(sobject)
    if sobject in DIRECTORY_SOBJECTS:
        return {k: _coerce(k, v) for k, v in values.items() if k not in ("Id", "attributes")}
    spec = entity_spec(sobject, schemas)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("Id", "attributes"):
            continue  # REST bodies carry them; the record id is the call's argument
        if name in SYSTEM_FIELDS and not allow_system:
            raise SandboxStoreError(
                f"{sobject}.{name} is set by the org itself (audit field); drop it from the values"
            )
        if name in spec.compounds:
            out.setdefault(name, {}).update(_compound_values(sobject, name, value, spec))
        elif name in spec.child_parent:
            _check_type(sobject, name, value, spec)
            out.setdefault(spec.child_parent[name], {})[name] = value
        elif name in spec.fields:
            _check_type(sobject, name, value, spec)
            out[name] = _coerce(name, value, sobject)
        else:
            raise UnknownFieldError(
                f"{sobject} has no field {name!r} in the {sobject}ChangeEvent schema; add it to "
                "kpi_pipeline/adapters/pubsub/schemas.py (or as a custom field: "
                "SandboxStore.add_custom_field) or stop writing it",
                sobject=sobject,
                field_name=name,
            )
    return out


def _compound_values(sobject: str, name: str, value: Any, spec: EntitySpec) -> dict[str, Any]:
    children = spec.compounds[name]
    if value is None:
        return dict.fromkeys(children)
    if not isinstance(value, Mapping):
        raise SandboxStoreError(
            f"{sobject}.{name} is a compound field; pass a mapping of {list(children)} "
            f"(or the children as top-level keys), not {value!r}"
        )
    unknown = set(value) - set(children)
    if unknown:
        raise UnknownFieldError(
            f"{sobject}.{name} has no parts {sorted(unknown)}; parts: {list(children)}",
            sobject=sobject,
            field_name=sorted(unknown)[0],
        )
    for child, child_value in value.items():
        _check_type(sobject, child, child_value, spec)
    return dict(value)


def rest_view(sobject: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record as Salesforce REST returns it: compounds flattened beside a
    read-only compound value, DateTimes as ISO strings, Dates as YYYY-MM-DD."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, Mapping):
            # REST flattens Lead's Address as City, Contact's MailingAddress as MailingCity.
            prefix = name.removesuffix("Address") if name.endswith("Address") else ""
            out.update({f"{prefix}{child}": v for child, v in value.items()})
            if name == "Name":
                parts = [value.get("FirstName"), value.get("LastName")]
                out["Name"] = " ".join(p for p in parts if p) or None
            else:
                out[name] = dict(value)
        elif name in DATETIME_FIELDS or name == "SystemModstamp":
            out[name] = format_sf_datetime(parse_sf_datetime(value)) or None
        elif name in DATE_FIELDS and value is not None:
            out[name] = datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d")
        else:
            out[name] = value
    out["attributes"] = {"type": sobject}
    return out
