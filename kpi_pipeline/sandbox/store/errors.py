"""What the sandbox store refuses, as exception types the REST server maps to Salesforce errors.

Kept apart from the store so the REST server can tell an unknown field from a bad value
without importing the SQLite code."""

from __future__ import annotations

from typing import Any


class SandboxStoreError(ValueError):
    """A write or read the sandbox org refuses (unknown sobject or field, bad value)."""


class RecordNotFoundError(SandboxStoreError):
    """The record does not exist (or is deleted) in the sandbox org."""


class UnknownFieldError(SandboxStoreError):
    """A write names a field the sObject does not have (the REST server answers INVALID_FIELD)."""

    def __init__(self, message: str, *, sobject: str, field_name: str) -> None:
        super().__init__(message)
        self.sobject, self.field_name = sobject, field_name


class FieldValueError(SandboxStoreError):
    """A value does not fit its field's Salesforce type (``sf_type``, e.g. "Int", "Lookup").

    Checked on write because the value would otherwise reach the change log and fail the
    Avro encoding of every subscriber's FetchResponse that carries it."""

    def __init__(
        self, message: str, *, sobject: str, field_name: str, sf_type: str, value: Any
    ) -> None:
        super().__init__(message)
        self.sobject, self.field_name, self.sf_type, self.value = (
            sobject,
            field_name,
            sf_type,
            value,
        )
