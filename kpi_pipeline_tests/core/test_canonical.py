"""Canonical JSON is the standard library's text, to the byte, whichever encoder writes it:
record ids hash it, so it must not change between versions."""

from __future__ import annotations

import enum
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core import canonical
from kpi_pipeline.core.canonical import canonical_json, canonical_value, dumps


def stdlib_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stdlib_canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Colour(enum.Enum):
    RED = "red"


class Label(enum.StrEnum):
    HOT = "hot"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-05, 2.5e-07, 0.0001, 9.99e-05, -0.0, 1e16, 1.5e17, 31.32, 5e-324])
    | st.text()
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_both_forms_equal_the_standard_library(value: Any) -> None:
    assert dumps(value) == stdlib_dumps(value)
    assert canonical_json(value) == stdlib_canonical_json(value)


@pytest.mark.parametrize(
    "value",
    [
        {"at": datetime(2026, 1, 2, tzinfo=UTC)},  # default=str: "2026-01-02 00:00:00+00:00"
        {1: "int keys", 2: "become strings"},
        {"colour": Colour.RED},  # orjson would write "red"
        {"label": Label.HOT},
        {"nan": math.nan, "inf": math.inf},
        {"tiny": 1e-05},
        {"big": 2**64},
        {"set": {3}},
    ],
)
def test_values_orjson_writes_otherwise_take_the_standard_library(value: Any) -> None:
    assert dumps(value) == stdlib_dumps(value)


def test_unserializable_values_fail_as_the_standard_library_fails() -> None:
    for value in ({"at": datetime(2026, 1, 2, tzinfo=UTC)}, {"surrogate": "\ud800"}):
        with pytest.raises((TypeError, UnicodeEncodeError)) as theirs:
            stdlib_canonical_json(value).encode()
        with pytest.raises(theirs.type):
            canonical_json(value).encode()
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(cycle)


def test_orjson_writes_the_common_documents() -> None:
    """Not only correct, but fast: a flywheel-shaped document takes the orjson path."""
    record = {
        "request": {"messages": [{"role": "user", "content": '{"a":1}'}], "model": "m"},
        "response": {"created": 1790003338, "usage": {"total_tokens": 0}, "minutes": 31.32},
        "metadata": {"lead_id": "00Q5g000000000NEAQ", "policy_version": "2026.12-1"},
    }
    assert canonical._by_orjson(record) is not None
    assert canonical._by_orjson({"tiny": 1e-05}) is None


@settings(max_examples=200, deadline=None)
@given(documents)
def test_canonical_value_reads_back_what_the_standard_library_reads_back(value: Any) -> None:
    """Same values in the same (sorted) key order, NaN and integers beyond 64 bits included
    (orjson would read those back as floats)."""
    theirs = json.loads(stdlib_dumps(value))
    assert json.dumps(canonical_value(value)) == json.dumps(theirs)
