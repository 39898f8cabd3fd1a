"""Avro schemas of the sandbox's change events (its default schema set).

The encoder that turns the sandbox store's changes into payloads with them lives in the
sandbox (``kpi_pipeline.sandbox.encoding``), which also adds an org's custom fields.

The schemas follow what Salesforce serves from GetSchema (reference §4): a top-level
record ``<Object>ChangeEvent`` in namespace ``com.sforce.eventbus`` whose field 0 is the
``ChangeEventHeader`` record, then the object's fields as nullable unions with default
null. DateTime and Date values are ``long`` epoch milliseconds. Compound fields (Lead
``Name``, ``Address``) are nested records; the person name is a ``Switchable_PersonName``
union ``["null", "string", record]`` as in the Java sample's EventParser.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kpi_pipeline.core.errors import UnknownSchemaError
from kpi_pipeline.core.events import CHANGE_TYPE_SYMBOLS as EVENT_CHANGE_TYPE_SYMBOLS
from kpi_pipeline.core.salesforce_fields import WRITTEN_LEAD_FIELDS

NAMESPACE = "com.sforce.eventbus"
CHANGE_TYPE_SYMBOLS = list(EVENT_CHANGE_TYPE_SYMBOLS)
BITMAP_HEADER_FIELDS = ("nulledFields", "diffFields", "changedFields")
# Fields a REST record has but CDC never carries (reference §4): dropped by the encoder.
NOT_IN_CDC = frozenset({"Id", "IsDeleted", "SystemModstamp", "attributes"})


def _header_schema() -> dict[str, Any]:
    strings = {"type": "array", "items": "string"}
    return {
        "type": "record",
        "name": "ChangeEventHeader",
        "namespace": NAMESPACE,
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": strings},
            {
                "name": "changeType",
                "type": {
                    "type": "enum",
                    "name": "ChangeType",
                    "namespace": NAMESPACE,
                    "symbols": CHANGE_TYPE_SYMBOLS,
                },
            },
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": strings},
            {"name": "diffFields", "type": strings},
            {"name": "changedFields", "type": strings},
        ],
    }


def _nullable(name: str, avro_type: Any, doc: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": ["null", avro_type], "default": None}
    if doc:
        out["doc"] = doc
    return out


# The sandbox's field types -> (Avro type, Salesforce's type name in schema docs). A real
# schema's doc is "<Category>:<Type>" ("Data:DynamicEnum", "CreatedDate:DateTime"), with the
# field's 15-char id appended for custom fields ("Data:Text:00N5g00000AbCdE").
_TYPES: dict[str, tuple[str, str]] = {
    "Text": ("string", "Text"),
    "Id": ("string", "EntityId"),
    "Picklist": ("string", "DynamicEnum"),
    "Email": ("string", "Email"),
    "Phone": ("string", "Phone"),
    "Url": ("string", "Url"),
    "TextArea": ("string", "MultiLineText"),
    "Lookup": ("string", "EntityId"),
    "Boolean": ("boolean", "Boolean"),
    "Int": ("int", "Int"),
    "Number": ("double", "Double"),
    "Currency": ("double", "Currency"),
    "DateTime": ("long", "DateTime"),
    "Date": ("long", "DateOnly"),
}
# Audit fields carry their own category instead of "Data".
_AUDIT_CATEGORIES = {
    "CreatedDate": "CreatedDate",
    "CreatedById": "CreatedBy",
    "LastModifiedDate": "LastModifiedDate",
    "LastModifiedById": "LastModifiedBy",
}


def _custom_field_id(name: str) -> str:
    """A stable 15-char custom field id (key prefix 00N) for a custom field's doc."""
    digest = hashlib.sha256(name.encode()).hexdigest().upper()
    return "00N5g00000" + digest[:5]


def field_doc(name: str, sf_type: str) -> str:
    """Salesforce's doc string of a field: ``Data:Text``, ``CreatedBy:EntityId``,
    ``Data:Double:00N5g00000ABCDE`` (custom fields)."""
    category = _AUDIT_CATEGORIES.get(name, "Data")
    doc = f"{category}:{_TYPES[sf_type][1] if sf_type in _TYPES else sf_type}"
    return f"{doc}:{_custom_field_id(name)}" if name.endswith("__c") else doc


def custom_field(name: str, sandbox_type: str) -> dict[str, Any]:
    """A custom field as a real schema lists it: nullable, doc ``Data:<Type>:<field id>``."""
    if not name.endswith("__c") or sandbox_type not in _TYPES:
        raise ValueError(
            f"custom field {name!r} of type {sandbox_type!r}: the name must end in __c and the "
            f"type be one of {sorted(_TYPES)}"
        )
    return _fields((name, sandbox_type))[0]


def _fields(*specs: tuple[str, str]) -> list[dict[str, Any]]:
    """(name, sandbox type) pairs as nullable Avro fields with Salesforce-style docs."""
    return [_nullable(name, _TYPES[t][0], field_doc(name, t)) for name, t in specs]


ADDRESS_CHILDREN = (
    ("Street", "TextArea"),
    ("City", "Text"),
    ("State", "Text"),
    ("PostalCode", "Text"),
    ("Country", "Text"),
    ("StateCode", "Picklist"),
    ("CountryCode", "Picklist"),
    ("Latitude", "Number"),
    ("Longitude", "Number"),
    # Real Address records carry Xyz here, so GeocodeAccuracy is child 10, not 9.
    ("Xyz", "Text"),
    ("GeocodeAccuracy", "Picklist"),
)
NAME_CHILDREN = (
    ("Salutation", "Picklist"),
    ("FirstName", "Text"),
    ("LastName", "Text"),
    ("MiddleName", "Text"),
    ("InformalName", "Text"),
    ("Suffix", "Text"),
)


class _NamedTypes:
    """Named types already defined in one schema: Avro forbids defining a name twice, so a
    second compound field of the same type refers to it by name, as real schemas do."""

    def __init__(self) -> None:
        self._defined: set[str] = set()

    def record(self, name: str, children: tuple[tuple[str, str], ...]) -> dict[str, Any] | str:
        if name in self._defined:
            return name  # resolved in the enclosing namespace (com.sforce.eventbus)
        self._defined.add(name)
        return {
            "type": "record",
            "name": name,
            "namespace": NAMESPACE,
            "fields": _fields(*children),
        }


def _address(types: _NamedTypes, field_name: str = "Address") -> dict[str, Any]:
    return _nullable(field_name, types.record("Address", ADDRESS_CHILDREN), "Data:Address")


def _person_name(types: _NamedTypes) -> dict[str, Any]:
    record = types.record("Switchable_PersonName", NAME_CHILDREN)
    return {
        "name": "Name",
        "type": ["null", "string", record],
        "doc": "Data:Switchable_PersonName",
        "default": None,
    }


# The audit fields in the order Lead, Contact and Account schemas carry them (Task and
# EmailMessage order them differently; a field's position is its bit in the bitmaps).
_AUDIT_FIELDS = (
    ("CreatedDate", "DateTime"),
    ("CreatedById", "Lookup"),
    ("LastModifiedDate", "DateTime"),
    ("LastModifiedById", "Lookup"),
)


def _custom_lead_fields() -> list[tuple[str, str]]:
    sf_to_spec = {"DateTime": "DateTime", "Number": "Number", "Lookup": "Lookup"}
    return [(f.api_name, sf_to_spec.get(f.sf_type, "Text")) for f in WRITTEN_LEAD_FIELDS]


def _change_event(entity: str, body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": f"{entity}ChangeEvent",
        "namespace": NAMESPACE,
        "doc": f"Change Data Capture event of {entity}",
        "fields": [{"name": "ChangeEventHeader", "type": _header_schema()}, *body],
    }


_lead_types = _NamedTypes()
LEAD_SCHEMA = _change_event(
    "Lead",
    [
        _person_name(_lead_types),
        *_fields(
            ("Company", "Text"),
            ("Title", "Text"),
            ("Email", "Email"),
            ("Phone", "Phone"),
            ("Status", "Picklist"),
            ("LeadSource", "Picklist"),
            ("Industry", "Picklist"),
            ("Rating", "Picklist"),
            ("NumberOfEmployees", "Int"),
            ("AnnualRevenue", "Currency"),
        ),
        _address(_lead_types),
        *_fields(
            ("OwnerId", "Lookup"),
            ("IsConverted", "Boolean"),
            ("ConvertedDate", "Date"),
            ("ConvertedAccountId", "Lookup"),
            ("ConvertedContactId", "Lookup"),
            ("ConvertedOpportunityId", "Lookup"),
            *_AUDIT_FIELDS,
            *_custom_lead_fields(),
        ),
    ],
)
TASK_SCHEMA = _change_event(
    "Task",
    _fields(
        ("Subject", "Text"),
        ("Status", "Picklist"),
        ("Priority", "Picklist"),
        ("IsClosed", "Boolean"),
        ("WhoId", "Lookup"),
        ("WhatId", "Lookup"),
        ("OwnerId", "Lookup"),
        ("ActivityDate", "Date"),
        ("CompletedDateTime", "DateTime"),
        ("TaskSubtype", "Picklist"),
        ("Type", "Picklist"),
        ("Description", "TextArea"),
        ("CreatedById", "Lookup"),
        ("CreatedDate", "DateTime"),
        ("LastModifiedDate", "DateTime"),
        ("LastModifiedById", "Lookup"),
    ),
)
EMAIL_MESSAGE_SCHEMA = _change_event(
    "EmailMessage",
    _fields(
        ("Subject", "Text"),
        ("FromAddress", "Email"),
        ("ToAddress", "Text"),
        ("Incoming", "Boolean"),
        ("MessageDate", "DateTime"),
        ("Status", "Picklist"),
        ("RelatedToId", "Lookup"),
        ("ActivityId", "Lookup"),
        ("EmailTemplateId", "Lookup"),
        ("TextBody", "TextArea"),
        ("CreatedById", "Lookup"),
        ("CreatedDate", "DateTime"),
        ("LastModifiedDate", "DateTime"),
    ),
)
_contact_types = _NamedTypes()
# Two compound fields of one type: the second Address is a reference by name, as in real
# Contact and Account schemas; readers (and the bitmap decoder) resolve it.
CONTACT_SCHEMA = _change_event(
    "Contact",
    [
        _person_name(_contact_types),
        *_fields(("AccountId", "Lookup"), ("Email", "Email"), ("Phone", "Phone")),
        _address(_contact_types, "MailingAddress"),
        _address(_contact_types, "OtherAddress"),
        *_fields(
            ("Title", "Text"),
            ("Description", "TextArea"),
            ("OwnerId", "Lookup"),
            *_AUDIT_FIELDS,
        ),
    ],
)
_account_types = _NamedTypes()
# BillingAddress defines Address; ShippingAddress refers to it by name (reference §4's
# bitmap example: "5-0x06" on it is ShippingAddress.City and ShippingAddress.State).
ACCOUNT_SCHEMA = _change_event(
    "Account",
    [
        *_fields(("Name", "Text"), ("Type", "Picklist"), ("ParentId", "Lookup")),
        _address(_account_types, "BillingAddress"),
        _address(_account_types, "ShippingAddress"),
        *_fields(
            ("Phone", "Phone"),
            ("Website", "Url"),
            ("Industry", "Picklist"),
            ("AnnualRevenue", "Currency"),
            ("NumberOfEmployees", "Int"),
            ("Description", "TextArea"),
            ("OwnerId", "Lookup"),
            *_AUDIT_FIELDS,
        ),
    ],
)
SCHEMAS_BY_ENTITY: dict[str, dict[str, Any]] = {
    "Lead": LEAD_SCHEMA,
    "Task": TASK_SCHEMA,
    "EmailMessage": EMAIL_MESSAGE_SCHEMA,
    "Contact": CONTACT_SCHEMA,
    "Account": ACCOUNT_SCHEMA,
}


def canonical_json(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def schema_id_for(schema: Mapping[str, Any]) -> str:
    """Deterministic 22-char URL-safe id (like ``a01VpgrsZNJdn-7KStJcxQ``) of the schema JSON."""
    digest = hashlib.sha256(canonical_json(schema).encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


SCHEMA_IDS_BY_ENTITY: dict[str, str] = {e: schema_id_for(s) for e, s in SCHEMAS_BY_ENTITY.items()}
_SCHEMAS_BY_ID: dict[str, dict[str, Any]] = {
    SCHEMA_IDS_BY_ENTITY[e]: s for e, s in SCHEMAS_BY_ENTITY.items()
}


def schema_json(schema_id: str) -> str:
    """The Avro schema JSON served by GetSchema; ``UnknownSchemaError`` for unknown ids."""
    schema = _SCHEMAS_BY_ID.get(schema_id)
    if schema is None:
        raise UnknownSchemaError(
            f"schema id {schema_id!r} is unknown; known ids: {sorted(_SCHEMAS_BY_ID)}"
        )
    return canonical_json(schema)
