"""``sobjects/<Type>/describe``: an sObject's fields as Salesforce describes them, from the
org's change-event schema (custom fields included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kpi_pipeline.core.schema_types import sf_type_of
from kpi_pipeline.sandbox.encoding import SchemaSet
from kpi_pipeline.sandbox.rest_server.responses import ApiError

# The sandbox's field types as sObject describe names them.
_DESCRIBE_TYPES = {
    "Text": "string",
    "Id": "id",
    "Picklist": "picklist",
    "Email": "email",
    "Phone": "phone",
    "Url": "url",
    "TextArea": "textarea",
    "Lookup": "reference",
    "Boolean": "boolean",
    "Int": "int",
    "Number": "double",
    "Currency": "currency",
    "DateTime": "datetime",
    "Date": "date",
}


def _describe_field(name: str, sf_type: str, compound: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "type": sf_type,
        "compoundFieldName": compound,
        "custom": name.endswith("__c"),
        "calculated": False,
    }


def describe_sobject(sobject: str, schemas: SchemaSet) -> dict[str, Any]:
    """``sobjects/<Type>/describe`` from the org's change-event schema: every field with
    its describe type, compound children under their REST names (``BillingCity``) with
    ``compoundFieldName``, plus the fields REST has and CDC does not (Id, IsDeleted,
    SystemModstamp). Address's ``Xyz`` is a CDC-only child and is left out."""
    schema = schemas.schemas.get(sobject)
    if schema is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    fields = [
        _describe_field("Id", "id"),
        _describe_field("IsDeleted", "boolean"),
        _describe_field("SystemModstamp", "datetime"),
    ]
    for spec in schema["fields"][1:]:
        branches = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        record = next((b for b in branches if isinstance(b, dict)), None)
        named = next((b for b in branches if isinstance(b, str) and b != "null"), None)
        if record is None and named in ("Address", "Switchable_PersonName"):
            record = _named_record(schema, named)  # a reference to a type defined earlier
        if record is None:
            fields.append(
                _describe_field(spec["name"], _DESCRIBE_TYPES[sf_type_of(spec) or "Text"])
            )
            continue
        parent = spec["name"]
        fields.append(
            _describe_field(parent, "address" if record["name"] == "Address" else "string")
        )
        prefix = parent.removesuffix("Address") if parent.endswith("Address") else ""
        for child in record["fields"]:
            if child["name"] == "Xyz":
                continue
            child_type = _DESCRIBE_TYPES[sf_type_of(child) or "Text"]
            fields.append(_describe_field(prefix + child["name"], child_type, parent))
    return {"name": sobject, "custom": False, "fields": fields}


def _named_record(schema: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for spec in schema["fields"][1:]:
        for branch in spec["type"] if isinstance(spec["type"], list) else [spec["type"]]:
            if isinstance(branch, dict) and branch.get("name") == name:
                return branch
    return None
