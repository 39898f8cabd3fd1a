"""Dialect-portable statement helpers (SQLite and PostgreSQL share ON CONFLICT syntax)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kpi_pipeline.core.canonical import dumps


def insert_ignore(conn: sa.Connection | sa.Engine, table: sa.Table, keys: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))


def canonical(value: Any) -> Any:
    """Round-trip through canonical JSON so stored documents never depend on dict order."""
    return json.loads(dumps(value))


def text_insert(
    table: sa.Table,
    columns: Sequence[str],
    keys: Sequence[str],
    update: dict[str, str] | None = None,
) -> sa.TextClause:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING | DO UPDATE SET ...`` as typed text.

    The dialect ``on_conflict_*`` constructs carry no cache key, so SQLAlchemy compiles them
    on every execution, which dominated the replay profile. The ON CONFLICT syntax is the
    same on SQLite (3.24+) and PostgreSQL, so hot upserts are written once as text with
    typed bind parameters (the column types still convert datetimes and JSON).
    ``update`` maps a column to its SQL expression (``excluded."col"`` etc.).
    """

    def quote(name: str) -> str:
        return f'"{name}"'

    sql = (
        f"INSERT INTO {table.name} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) "
    )
    if update:
        sql += "DO UPDATE SET " + ", ".join(f"{quote(c)} = {expr}" for c, expr in update.items())
    else:
        sql += "DO NOTHING"
    return sa.text(sql).bindparams(*(sa.bindparam(c, type_=table.c[c].type) for c in columns))
