"""Bulk writes through the driver's cursor: ``executemany`` of a typed text statement
(``sql.text_insert``) without SQLAlchemy's per-row parameter processing.

Processing writes every batch with a few ``executemany`` calls of thousands of rows
(``BatchWork.flush``, ``save_records``). For each row SQLAlchemy rebuilds the parameter
dict and runs every column's bind processor through its generic machinery, which cost
more than SQLite's own work (bench/RESULTS.md, Replay). Here the statement is compiled
once per dialect, the column types' own bind processors (the same ones: ``UTCDateTime``,
JSON through the engine's serializer, SQLite's datetime format) are looked up once, and
the rows go to the cursor as tuples, in ``conn``'s transaction.

Only on SQLite; other dialects go through ``conn.execute`` unchanged (psycopg2's cursor
``executemany`` is not faster than SQLAlchemy's path there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class _Prepared:
    statement: sa.TextClause  # kept so the cache key (its id) cannot be reused
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # in positional order


_PREPARED: dict[tuple[int, str], _Prepared] = {}


def _prepare(dialect: sa.Dialect, statement: sa.TextClause) -> _Prepared:
    key = (id(statement), dialect.name)
    prepared = _PREPARED.get(key)
    if prepared is None:
        compiled = statement.compile(dialect=dialect)
        names = compiled.positiontup or []
        binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        )
        prepared = _PREPARED[key] = _Prepared(statement, compiled.string, binds)
    return prepared


def executemany(
    conn: sa.Connection, statement: sa.TextClause, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(statement, rows)``, through the driver cursor on SQLite."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(statement, list(rows))
        return
    prepared = _prepare(conn.dialect, statement)
    binds = prepared.binds
    params = [
        tuple(row[name] if process is None else process(row[name]) for name, process in binds)
        for row in rows
    ]
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(prepared.sql, params)
    finally:
        cursor.close()
