"""Checking the values a REST write sends, and shaping records as REST returns them.

A refused value gets the error a real org gives for it: unknown field INVALID_FIELD, wrong
type JSON_PARSER_ERROR, malformed reference MALFORMED_ID, read-only field
INVALID_FIELD_FOR_INSERT_UPDATE. The checks reuse the store's own normalization, so the
REST server and the store refuse the same values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kpi_pipeline.sandbox.changelog import SANDBOX_ENTITIES
from kpi_pipeline.sandbox.encoding import SchemaSet
from kpi_pipeline.sandbox.rest_server.responses import ApiError, save_error
from kpi_pipeline.sandbox.store import (
    FieldValueError,
    SandboxStoreError,
    UnknownFieldError,
    field_type,
    normalize_values,
    rest_view,
)

READ_ONLY_FIELDS = frozenset(
    {
        "Id",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
        "SystemModstamp",
        "IsDeleted",
    }
)


RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
# Fields a create must set (nillable=false without a default in a standard org).
REQUIRED_ON_CREATE: Mapping[str, tuple[str, ...]] = {
    "Lead": ("LastName", "Company"),
    "Task": (),
    "EmailMessage": ("Status",),
}
# Owned objects: a create without OwnerId gives the record to the calling user.
OWNED_SOBJECTS = frozenset({"Lead", "Task"})
# JSON types of the wrong-typed values, worded as Salesforce's JSON parser reports them.
_PARSER_TYPES = {
    "Int": "int",
    "Number": "double",
    "Currency": "double",
    "Boolean": "boolean",
    "DateTime": "datetime",
    "Date": "date",
}


def rolled_back(
    checked: list[tuple[dict[str, Any] | None, tuple[str, str, dict]]],
) -> list[dict[str, Any]]:
    message = "Record rolled back because not all records were valid and the request was using AllOrNone header"
    return [
        {
            "success": False,
            "errors": [err or save_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", message)],
        }
        for err, _ in checked
    ]


def check_writable(sobject: str) -> None:
    # A real org answers NOT_FOUND for an sObject it does not have; the sandbox writes only the
    # objects it publishes change events for.
    if sobject not in SANDBOX_ENTITIES:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")


def record_body(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "the body must be a JSON object of field values")
    return dict(payload)


def read_only_error(names: Sequence[str]) -> dict[str, Any]:
    return {
        "code": "INVALID_FIELD_FOR_INSERT_UPDATE",
        "message": f"Unable to create/update fields: {', '.join(names)}. Please check the security "
        "settings of this field and verify that it is read/write for your profile or permission set.",
        "fields": list(names),
    }


def check_values(sobject: str, values: Mapping[str, Any], schemas: SchemaSet) -> None:
    """Unknown fields and wrong-typed values, found by the store's own normalization; read-only
    fields are left to the caller (they get their own error)."""
    try:
        normalize_values(
            sobject,
            {k: v for k, v in values.items() if k not in READ_ONLY_FIELDS},
            schemas=schemas,
        )
    except SandboxStoreError as exc:
        raise value_error(sobject, exc) from None
    for name, value in values.items():
        # The store takes any string in a reference field (its own tests and tools use short
        # placeholders); an org refuses one that is not shaped like an id.
        if (
            isinstance(value, str)
            and field_type(sobject, name, schemas) == "Lookup"
            and not RECORD_ID.match(value)
        ):
            raise ApiError(
                400, "MALFORMED_ID", f"{name}: id value of incorrect type: {value}", [name]
            )


def value_error(sobject: str, exc: SandboxStoreError) -> ApiError:
    """A store refusal as the error Salesforce gives for that kind of bad value."""
    if isinstance(exc, UnknownFieldError):
        return ApiError(
            400, "INVALID_FIELD", f"No such column '{exc.field_name}' on sobject of type {sobject}"
        )
    if isinstance(exc, FieldValueError):
        expected = _PARSER_TYPES.get(exc.sf_type, "string")
        return ApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {expected} from {_json_token(exc.value)} value "
            f"{json.dumps(exc.value)} or request may be missing a required field",
        )
    # Anything else the store refuses (e.g. a compound field given a scalar).
    return ApiError(400, "INVALID_FIELD", str(exc), [])


def _json_token(value: Any) -> str:
    """The JSON parser's name for a value's token, as in Salesforce's JSON_PARSER_ERROR."""
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, str):
        return "VALUE_STRING"
    return "START_ARRAY" if isinstance(value, list) else "START_OBJECT"


def project_record(
    version: str, sobject: str, record: Mapping[str, Any], names: Sequence[str] | None
) -> dict[str, Any]:
    """The record as REST returns it (store shape -> REST shape), limited to ``names``."""
    view = rest_view(sobject, record)
    view.pop("attributes", None)
    url = f"/services/data/v{version}/sobjects/{sobject}/{record.get('Id', '')}"
    out: dict[str, Any] = {"attributes": {"type": sobject, "url": url}}
    by_lower = {k.lower(): k for k in view}
    for name in names if names is not None else list(view):
        key = by_lower.get(name.lower(), name)  # SOQL names are case-insensitive
        out[key] = view.get(key)
    return out
