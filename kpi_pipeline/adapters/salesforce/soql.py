"""What the REST adapter puts into URLs and SOQL (an adapter helper): API names and record
ids checked (which also rules out injection), select lists, dateTime literals, ids quoted in
chunks for ``IN (...)``, history object names, and ``attributes`` stripped from rows."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

MAX_IDS_PER_QUERY = 200
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal (UTC, second precision; naive values are taken as UTC)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_object(sobject: str) -> tuple[str, str]:
    """(history object, its parent-id field): Lead -> (LeadHistory, LeadId), Foo__c ->
    (Foo__History, ParentId)."""
    if sobject.endswith("__c"):
        return sobject[: -len("c")] + "History", "ParentId"
    return f"{sobject}History", f"{sobject}Id"


def strip_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "attributes"}


def select_list(fields: Sequence[str], required: Sequence[str]) -> str:
    names = list(dict.fromkeys([*required, *fields]))
    for name in names:
        check_name(name, "field name")
    return ", ".join(names)


def check_name(name: str, what: str) -> None:
    # Names go into URLs and SOQL: only API names, which also rules out injection.
    if not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not a Salesforce API name (letters, digits, underscores)"
        )


def check_record_id(record_id: str) -> None:
    if not _RECORD_ID.match(record_id or ""):
        raise ValueError(f"record id {record_id!r} is not a 15- or 18-character Salesforce id")


def quoted_id_chunks(ids: Iterable[str]) -> Iterator[str]:
    """The distinct ids (first-seen order), each checked, quoted for ``IN (...)`` in chunks of
    ``MAX_IDS_PER_QUERY``, so no query outgrows the SOQL limits."""
    unique = list(dict.fromkeys(ids))
    for record_id in unique:
        check_record_id(record_id)
    for i in range(0, len(unique), MAX_IDS_PER_QUERY):
        yield ",".join(f"'{rid}'" for rid in unique[i : i + MAX_IDS_PER_QUERY])
