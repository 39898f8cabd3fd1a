"""sf_type_of: a change-event schema field's type, from its Salesforce-style doc."""

from __future__ import annotations

import pytest

from kpi_pipeline.core.schema_types import sf_type_of


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("Data:DateTime", "DateTime"),
        ("LastModifiedDate:DateTime", "DateTime"),
        ("Data:DateOnly", "Date"),
        ("Data:EntityId", "Lookup"),
        ("Data:Text:00N5g00000ABCDE", "Text"),
        ("Data:Geolocation", None),  # a type the sandbox does not model
        ("DateTime", None),  # no category part
        ("", None),
    ],
)
def test_the_doc_names_the_type(doc: str, expected: str | None) -> None:
    assert sf_type_of({"name": "F", "doc": doc}) == expected


def test_a_field_without_doc_has_no_type() -> None:
    assert sf_type_of({"name": "F"}) is None
