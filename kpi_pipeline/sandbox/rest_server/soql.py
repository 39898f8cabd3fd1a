"""The SOQL subset the pipeline issues, parsed into queries the REST server answers.

``parse_soql``: ``SELECT <fields> FROM <Object>`` filtered by ids or by ``LastModifiedDate``,
ordered by ``LastModifiedDate``, limited. ``parse_history_soql``: ``LeadHistory`` filtered by
``LeadId`` and ``Field``. Anything else is MALFORMED_QUERY naming the unsupported part."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime
from kpi_pipeline.sandbox.rest_server.responses import ApiError

SOQL_PATTERN = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_WHERE_IDS = re.compile(r"^Id\s+IN\s*\((?P<ids>[^)]*)\)$", re.IGNORECASE)
_WHERE_ID = re.compile(r"^Id\s*=\s*'(?P<id>[A-Za-z0-9]+)'$", re.IGNORECASE)
_WHERE_MODIFIED = re.compile(
    r"^LastModifiedDate\s*>=\s*(?P<since>\S+)(?:\s+AND\s+LastModifiedDate\s*<\s*(?P<until>\S+))?$",
    re.IGNORECASE,
)
_ORDER = re.compile(r"^LastModifiedDate(?:\s+(?P<dir>ASC|DESC))?$", re.IGNORECASE)
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_QUOTED_ID = re.compile(r"^'([A-Za-z0-9]+)'$")
# History objects: LeadHistory's fields as a real org describes them (OldValue/NewValue are
# anyType: ids and names come back as strings).
HISTORY_OBJECTS: Mapping[str, tuple[str, str]] = {"LeadHistory": ("Lead", "LeadId")}
_HISTORY_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedById",
    "CreatedDate",
    "Field",
    "OldValue",
    "NewValue",
    "DataType",
)
_HISTORY_CONDITION = re.compile(
    r"^(?P<name>\w+)\s*(?:=\s*(?P<one>'[^']*')|IN\s*\((?P<many>[^)]*)\))$", re.IGNORECASE
)
_QUOTED = re.compile(r"^'([^']*)'$")


@dataclass(frozen=True)
class SoqlQuery:
    sobject: str
    fields: tuple[str, ...]
    ids: tuple[str, ...] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    order_desc: bool | None = None  # None: no ORDER BY
    limit: int | None = None


_SUPPORTED = (
    "SELECT <fields> FROM <Object> [WHERE Id IN ('..') | "
    "WHERE LastModifiedDate >= <ISO> [AND LastModifiedDate < <ISO>]] "
    "[ORDER BY LastModifiedDate [ASC|DESC]] [LIMIT n]"
)
_HISTORY_SUPPORTED = (
    "SELECT <fields> FROM LeadHistory WHERE LeadId IN ('..') "
    "[AND Field = '..' | Field IN ('..')] [ORDER BY CreatedDate [ASC|DESC]] [LIMIT n]"
)


def _malformed(what: str, supported: str = _SUPPORTED) -> ApiError:
    """MALFORMED_QUERY naming the unsupported part and the subset the sandbox answers."""
    return ApiError(400, "MALFORMED_QUERY", f"{what}. The sandbox supports: {supported}")


def parse_soql(text: str) -> SoqlQuery:
    """The SOQL subset the pipeline issues; anything else is MALFORMED_QUERY naming the part."""
    match = SOQL_PATTERN.match(text)
    if not match:
        raise _malformed(f"unsupported query {text[:120]!r}")
    fields = tuple(f.strip() for f in match["fields"].split(","))
    for name in fields:
        if not _FIELD.match(name):
            raise _malformed(f"unsupported select item {name!r} (plain field names only)")
    query = SoqlQuery(
        match["object"], fields, limit=int(match["limit"]) if match["limit"] else None
    )
    if match["where"]:
        query = _apply_where(query, match["where"].strip())
    if match["order"]:
        order = _ORDER.match(match["order"].strip())
        if not order:
            raise _malformed(f"unsupported ORDER BY {match['order'].strip()!r}")
        query = _replace(query, order_desc=(order["dir"] or "ASC").upper() == "DESC")
    return query


def _apply_where(query: SoqlQuery, where: str) -> SoqlQuery:
    if m := _WHERE_IDS.match(where):
        ids = []
        for item in m["ids"].split(","):
            quoted = _QUOTED_ID.match(item.strip())
            if not quoted:
                raise _malformed(
                    f"unsupported IN list item {item.strip()!r} (quoted record ids only)"
                )
            ids.append(quoted[1])
        return _replace(query, ids=tuple(ids))
    if m := _WHERE_ID.match(where):
        return _replace(query, ids=(m["id"],))
    if m := _WHERE_MODIFIED.match(where):
        until = _soql_datetime_ms(m["until"]) if m["until"] else None
        return _replace(query, since_ms=_soql_datetime_ms(m["since"]), until_ms=until)
    raise _malformed(f"unsupported WHERE clause {where!r}")


def _soql_datetime_ms(literal: str) -> int:
    try:
        parsed = parse_sf_datetime(literal) if re.search(r"(Z|[+-]\d\d:?\d\d)$", literal) else None
    except EventFormatError:
        parsed = None
    if parsed is None:
        raise _malformed(
            f"value of filter criterion {literal!r} is not a SOQL dateTime literal such as "
            "2024-05-01T10:00:00Z"
        )
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class HistoryQuery:
    """``SELECT <fields> FROM <Object>History WHERE <Parent>Id IN (..) [AND Field = '..']
    [ORDER BY CreatedDate [ASC|DESC]] [LIMIT n]``."""

    sobject: str  # LeadHistory
    parent: str  # Lead
    fields: tuple[str, ...]
    parent_ids: tuple[str, ...]
    field_names: tuple[str, ...] | None = None
    order_desc: bool = False
    limit: int | None = None


def _history_malformed(what: str) -> ApiError:
    return _malformed(what, _HISTORY_SUPPORTED)


def parse_history_soql(text: str) -> HistoryQuery:
    """A history-object query; unknown columns are INVALID_FIELD as in a real org."""
    match = SOQL_PATTERN.match(text)
    if not match or match["object"] not in HISTORY_OBJECTS:
        raise _history_malformed(f"unsupported query {text[:120]!r}")
    sobject = match["object"]
    parent, parent_field = HISTORY_OBJECTS[sobject]
    known = {n.lower(): n for n in (*_HISTORY_FIELDS, parent_field)}
    fields = []
    for name in (f.strip() for f in match["fields"].split(",")):
        if name.lower() not in known:
            raise ApiError(
                400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.", [name]
            )
        fields.append(known[name.lower()])
    ids: tuple[str, ...] | None = None
    field_names: tuple[str, ...] | None = None
    where = (match["where"] or "").strip()
    for condition in re.split(r"\s+AND\s+", where, flags=re.I) if where else ():
        found = _HISTORY_CONDITION.match(condition.strip())
        name = found["name"].lower() if found else ""
        values = _quoted_values(found) if found else ()
        if name == parent_field.lower():
            ids = values
        elif name == "field":
            field_names = values
        else:
            raise _history_malformed(f"unsupported WHERE condition {condition.strip()!r}")
    if ids is None:
        raise _history_malformed(f"a {sobject} query must filter on {parent_field}")
    order_desc = False
    if match["order"]:
        order = re.match(r"^CreatedDate(?:\s+(ASC|DESC))?$", match["order"].strip(), re.I)
        if not order:
            raise _history_malformed(f"unsupported ORDER BY {match['order'].strip()!r}")
        order_desc = (order[1] or "ASC").upper() == "DESC"
    limit = int(match["limit"]) if match["limit"] else None
    return HistoryQuery(sobject, parent, tuple(fields), ids, field_names, order_desc, limit)


def _quoted_values(found: re.Match[str]) -> tuple[str, ...]:
    items = [found["one"]] if found["one"] is not None else found["many"].split(",")
    values = []
    for item in items:
        quoted = _QUOTED.match(item.strip())
        if not quoted:
            raise _history_malformed(f"unsupported value {item.strip()!r} (quoted strings only)")
        values.append(quoted[1])
    return tuple(values)


def _replace(query: SoqlQuery, **changes: Any) -> SoqlQuery:
    return SoqlQuery(**{**query.__dict__, **changes})


def modified_ms(record: Mapping[str, Any]) -> int:
    value = parse_sf_datetime(record.get("LastModifiedDate"))
    return int(value.timestamp() * 1000) if value else 0
