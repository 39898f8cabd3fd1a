"""Evaluating a routing rule's condition on a lead's fields (pure): equals, in, ranges, dates and
the all/any/not combinators, with ``explain`` saying why a condition held or not."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime
from kpi_pipeline.core.policy.load import Condition


def _same(actual: Any, expected: Any) -> bool:
    """Equality as an admin means it: strings case-insensitively, '42' == 42, 'true' == True."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return str(actual).lower() == str(expected).lower()
    if isinstance(expected, int | float) or isinstance(actual, int | float):
        number = _as_number(actual), _as_number(expected)
        return None not in number and number[0] == number[1]
    return str(actual).casefold() == str(expected).casefold()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _as_date(value: Any) -> datetime | None:
    try:
        return parse_sf_datetime(value)
    except EventFormatError:
        return None


def _in_range(actual: Any, bounds: Mapping[str, Any]) -> bool:
    if actual is None or actual == "":
        return False
    dated = any(isinstance(b, str) for b in bounds.values())
    convert = _as_date if dated else _as_number
    value = convert(actual)
    if value is None:
        return False
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and value < convert(low):
        return False
    return not (high is not None and value > convert(high))


def field_value(fields: Mapping[str, Any], path: str) -> Any:
    """A field's value; ``Address.Country`` reads a child of a compound field."""
    if path in fields or "." not in path:
        return fields.get(path)
    parent, _, child = path.partition(".")
    compound = fields.get(parent)
    return compound.get(child) if isinstance(compound, Mapping) else None


def _leaf(condition: Condition, fields: Mapping[str, Any]) -> bool:
    actual = field_value(fields, condition.field or "")
    op, expected = condition.op, condition.value
    if op == "equals":
        return _same(actual, expected)
    if op == "in":
        return any(_same(actual, option) for option in expected)
    if op == "range":
        return _in_range(actual, expected)
    if op == "exists":
        return (actual is not None and actual != "") == bool(expected)
    return isinstance(actual, str) and actual.casefold().startswith(str(expected).casefold())


def matches(condition: Condition | None, fields: Mapping[str, Any]) -> bool:
    """Whether a lead's fields satisfy a rule's ``when`` (None matches everything)."""
    if condition is None:
        return True
    if condition.op == "any":
        return any(matches(child, fields) for child in condition.children)
    if condition.op == "all":
        return all(matches(child, fields) for child in condition.children)
    if condition.op == "not":
        return not matches(condition.children[0], fields)
    return _leaf(condition, fields)


def explain(condition: Condition | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluated condition tree, each node with its result (for the decision record)."""
    if condition is None:
        return {"op": "always", "result": True}
    if condition.op in ("any", "all", "not"):
        children = [explain(child, fields) for child in condition.children]
        return {"op": condition.op, "result": matches(condition, fields), "children": children}
    return {
        "field": condition.field,
        "op": condition.op,
        "expected": condition.value,
        "actual": field_value(fields, condition.field or ""),
        "result": _leaf(condition, fields),
    }
