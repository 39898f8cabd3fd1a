"""Dialect-portable statement helpers (SQLite and PostgreSQL share ON CONFLICT syntax)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kpi_pipeline.adapters.ledger.bulk import UpsertText, rows_where_in
from kpi_pipeline.adapters.ledger.engine import LedgerError

RowData = TypeVar("RowData")


def insert_ignore(conn: sa.Connection | sa.Engine, table: sa.Table, keys: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))


def required_row(conn: sa.Connection, key: sa.Column[Any], value: Any, missing: str) -> Any:
    """The row of ``key``'s table whose ``key`` is ``value``; a LedgerError saying
    ``missing`` (with ``value`` formatted into it) when there is none."""
    row = conn.execute(sa.select(key.table).where(key == value)).one_or_none()
    if row is None:
        raise LedgerError(missing.format(value))
    return row


def pairs_where_in(
    conn: sa.Connection,
    pair: tuple[sa.Column[Any], sa.Column[Any]],
    column: sa.Column[Any],
    ids: Iterable[Any],
) -> dict[Any, Any]:
    """``{first: second}`` of ``pair`` over the rows whose ``column`` is one of ``ids``,
    ``CHUNK`` ids a query (``bulk.rows_where_in``)."""
    return dict(rows_where_in(conn, pair, column, ids))


def from_row(cls: type[RowData], row: sa.Row[Any], **converted: Any) -> RowData:
    """A dataclass read from a row: each field from the column of its name, unless
    ``converted`` gives its value (a column named otherwise, a value to convert)."""
    columns = row._mapping
    return cls(
        **{
            field.name: converted[field.name] if field.name in converted else columns[field.name]
            for field in dataclasses.fields(cls)
        }
    )


def field_params(row: Any) -> dict[str, Any]:
    """A dataclass row's fields by name, for an insert whose columns are named like them."""
    return {field.name: getattr(row, field.name) for field in dataclasses.fields(row)}


def text_insert(
    table: sa.Table,
    columns: Sequence[str],
    keys: Sequence[str],
    update: dict[str, str] | None = None,
) -> UpsertText:
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
    statement = UpsertText(sql)
    statement.conflict_keys = tuple(keys)
    statement.updates_on_conflict = bool(update)
    return statement.bindparams(*(sa.bindparam(c, type_=table.c[c].type) for c in columns))
