"""The Salesforce field type a change-event schema field declares in its ``doc``.

GetSchema answers describe each field with a doc ``<Category>:<Type>[:<field id>]``
(``Data:DateTime``, ``LastModifiedDate:DateTime``, ``Data:Text:00N...``). This reads the
type back as the sandbox names its field types ("DateTime", "Date", "Picklist", ...): pure,
so both the Pub/Sub schemas and the re-sync (which learns an entity's date fields from a
staged schema) use the one mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The doc's Salesforce type -> the sandbox's type name.
SF_DOC_TO_SANDBOX_TYPE: Mapping[str, str] = {
    "Text": "Text",
    "EntityId": "Lookup",
    "DynamicEnum": "Picklist",
    "Email": "Email",
    "Phone": "Phone",
    "Url": "Url",
    "MultiLineText": "TextArea",
    "Boolean": "Boolean",
    "Int": "Int",
    "Double": "Number",
    "Currency": "Currency",
    "DateTime": "DateTime",
    "DateOnly": "Date",
    "Address": "Address",
    "Switchable_PersonName": "Switchable_PersonName",
}


def sf_type_of(field: Mapping[str, Any]) -> str | None:
    """The sandbox's type name ("DateTime", "Date", "Int", "Picklist", ...) of a schema field,
    read from its Salesforce-style doc; None when the doc names no known type."""
    parts = str(field.get("doc") or "").split(":")
    return SF_DOC_TO_SANDBOX_TYPE.get(parts[1]) if len(parts) >= 2 else None
