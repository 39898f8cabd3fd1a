"""Bulk writes and keyed reads through the driver's cursor, without SQLAlchemy's per-row
machinery: ``executemany`` of a typed text statement (``sql.text_insert``), and
``rows_where_in``, the ``SELECT ... WHERE key IN (...)`` that every processing step runs.

Processing writes every batch with a few ``executemany`` calls of thousands of rows
(``BatchWork.flush``, ``save_records``). For each row SQLAlchemy rebuilds the parameter
dict and runs every column's bind processor through its generic machinery, which cost
more than SQLite's own work (bench/RESULTS.md, Replay). Here the statement is compiled
once per dialect, the column types' own bind processors (the same ones: ``UTCDateTime``,
JSON through the engine's serializer, SQLite's datetime format) are looked up once, and
the rows go to the cursor as tuples, in ``conn``'s transaction.

On PostgreSQL an upsert of ``sql.text_insert`` (an ``UpsertText``) goes as one multi-row
``INSERT ... VALUES (...), (...) ON CONFLICT ...`` a page of rows (psycopg2's
``execute_values``): the server parses, plans and runs one statement instead of one a row,
about twice as fast as psycopg2's ``execute_batch`` (bench/RESULTS.md, Catch-up). Other
statements, and an upsert that would update one row twice in a statement (which
PostgreSQL refuses), go through ``conn.execute`` (``execute_batch``).

``rows_where_in`` is the read counterpart: on SQLite, a statement built once per shape and
chunk size, each value converted by its column type's own result processor (the same one
SQLAlchemy applies: ``UTCDateTime``, JSON through the engine's deserializer); a batch runs
about twenty such reads, and SQLAlchemy's statement execution and ``Row`` objects cost
more than SQLite's work for them (bench/RESULTS.md, Replay).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


class UpsertText(sa.TextClause):
    """A typed text ``INSERT ... VALUES (...) ON CONFLICT (keys) ...`` (``sql.text_insert``)
    that knows its conflict keys and whether it updates on a conflict, so that
    ``executemany`` can send its rows as multi-row VALUES on PostgreSQL."""

    inherit_cache = True  # the text is the whole statement; these attributes follow from it
    conflict_keys: tuple[str, ...] = ()
    updates_on_conflict: bool = False


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
        binds = _bind_processors(compiled, compiled.positiontup or [])
        prepared = _PREPARED[key] = _Prepared(statement, compiled.string, binds)
    return prepared


@contextmanager
def _driver_cursor(conn: sa.Connection, sql: str) -> Iterator[Any]:
    """The driver's cursor, in ``conn``'s transaction, closed afterwards. Its errors are
    raised as ``conn.execute`` raises them (``sa.exc.DBAPIError`` and its subclasses): a
    processing step tells a database error, which fails the step, from a lead's own failure,
    which dead-letters the lead (``StepContext.isolated``)."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(
            sql, None, exc, dbapi_error, hide_parameters=True, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


def _bind_processors(
    compiled: sa.engine.Compiled, names: Sequence[str]
) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """Each parameter's name and its column type's bind processor for the dialect."""
    dialect = compiled.dialect
    return tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in names
    )


def executemany(
    conn: sa.Connection, statement: sa.TextClause, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(statement, rows)``: through the driver cursor on SQLite, as multi-row
    VALUES on PostgreSQL where the statement allows it."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        _sqlite_executemany(conn, statement, rows)
    elif _multi_row_allowed(statement, rows):
        _multi_row_values(conn, statement, rows)
    else:
        conn.execute(statement, list(rows))


def insert_new(
    conn: sa.Connection, statement: UpsertText, rows: Sequence[Mapping[str, Any]]
) -> int:
    """Insert the rows whose key is not in the table yet with ``statement`` (an ``ON CONFLICT
    DO NOTHING`` of ``sql.text_insert``); how many were inserted. One statement instead of
    a read for the keys already there and then the insert."""
    if not isinstance(statement, UpsertText) or statement.updates_on_conflict:
        raise ValueError("insert_new takes an ON CONFLICT DO NOTHING statement of sql.text_insert")
    if not rows:
        return 0
    if conn.dialect.name == "sqlite":
        return _sqlite_executemany(conn, statement, rows)
    return _multi_row_values(conn, statement, rows)


def _sqlite_executemany(
    conn: sa.Connection, statement: sa.TextClause, rows: Sequence[Mapping[str, Any]]
) -> int:
    """The rows through the sqlite3 cursor; the rows it changed (sqlite3 sums them over an
    ``executemany``; a row that meets ``DO NOTHING`` changes none)."""
    prepared = _prepare(conn.dialect, statement)
    with _driver_cursor(conn, prepared.sql) as cursor:
        cursor.executemany(prepared.sql, _params(prepared.binds, rows))
        return cursor.rowcount


def _params(
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...], rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    return [
        tuple(row[name] if process is None else process(row[name]) for name, process in binds)
        for row in rows
    ]


VALUES_PAGE = 1_000  # rows per multi-row statement on PostgreSQL (a few hundred KB of SQL)


@dataclass(frozen=True, slots=True)
class _MultiRow:
    statement: sa.TextClause  # kept so the cache key (its id) cannot be reused
    sql: str  # the statement with ``VALUES %s``
    template: str  # one row's ``(%s, %s::JSON, ...)``
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # in the template's order


_MULTI_ROW: dict[tuple[int, str], _MultiRow] = {}


def _multi_row_allowed(statement: sa.TextClause, rows: Sequence[Mapping[str, Any]]) -> bool:
    """An ``UpsertText`` that updates no row twice: PostgreSQL refuses "ON CONFLICT DO
    UPDATE command cannot affect row a second time" in one statement."""
    if not isinstance(statement, UpsertText):
        return False
    if not statement.updates_on_conflict:
        return True
    keys = statement.conflict_keys
    return len({tuple(row[k] for k in keys) for row in rows}) == len(rows)


def _multi_row_values(
    conn: sa.Connection, statement: UpsertText, rows: Sequence[Mapping[str, Any]]
) -> int:
    """The rows as multi-row VALUES statements of ``VALUES_PAGE`` rows (psycopg2's
    ``execute_values``, one page a call so that each page's row count can be added up);
    the rows inserted or updated."""
    # Imported here: only PostgreSQL ledgers need the driver (19 ms to import).
    from psycopg2.extras import execute_values

    prepared = _multi_row(conn.dialect, statement)
    params = _params(prepared.binds, rows)
    written = 0
    with _driver_cursor(conn, prepared.sql) as cursor:
        for start in range(0, len(params), VALUES_PAGE):
            page = params[start : start + VALUES_PAGE]
            execute_values(
                cursor, prepared.sql, page, template=prepared.template, page_size=len(page)
            )
            written += cursor.rowcount
    return written


def _multi_row(dialect: sa.Dialect, statement: UpsertText) -> _MultiRow:
    key = (id(statement), dialect.name)
    prepared = _MULTI_ROW.get(key)
    if prepared is None:
        compiled = statement.compile(dialect=dialect)
        # text_insert's layout: INSERT INTO t (...) VALUES (<one row>) ON CONFLICT ...
        head, rest = compiled.string.split(" VALUES (", 1)
        row, tail = rest.split(") ON CONFLICT ", 1)
        binds = _bind_processors(compiled, re.findall(r"%\((\w+)\)s", row))
        template = "(" + re.sub(r"%\(\w+\)s", "%s", row) + ")"
        sql = f"{head} VALUES %s ON CONFLICT {tail}"
        prepared = _MULTI_ROW[key] = _MultiRow(statement, sql, template, binds)
    return prepared


CHUNK = 500  # ids per ``IN (...)`` list: well under every driver's bind-parameter limit

# By the ids of the (module-level, never freed) columns: a Column's ``==`` builds SQL. One
# entry per read shape (about ten) and chunk size (1 to CHUNK), so it stays bounded.
_SELECTS: dict[tuple[Any, ...], tuple[str, tuple[Callable[[Any], Any] | None, ...]]] = {}


def rows_where_in(
    conn: sa.Connection,
    columns: Sequence[sa.Column[Any]],
    key: sa.Column[Any],
    values: Iterable[Any],
    *,
    equal: tuple[sa.Column[Any], Any] | None = None,
    order_by: Sequence[sa.Column[Any]] = (),
    for_update: bool = False,
) -> list[tuple[Any, ...]]:
    """``columns`` of the rows of ``key``'s table whose ``key`` is one of ``values`` (and
    whose ``equal[0]`` column is ``equal[1]``), as tuples, ``CHUNK`` keys a query, each
    chunk ordered by ``order_by``; ``for_update`` locks them on PostgreSQL (SQLite's write
    transaction already excludes other writers)."""
    wanted = sorted(set(values))
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        if conn.dialect.name == "sqlite":
            rows += _sqlite_rows(conn, tuple(columns), key, chunk, equal, tuple(order_by))
            continue
        query = sa.select(*columns).where(key.in_(chunk)).order_by(*order_by)
        if equal is not None:
            query = query.where(equal[0] == equal[1])
        if for_update:
            query = query.with_for_update()
        rows += [tuple(row) for row in conn.execute(query)]
    return rows


def _sqlite_rows(
    conn: sa.Connection,
    columns: tuple[sa.Column[Any], ...],
    key: sa.Column[Any],
    chunk: list[Any],
    equal: tuple[sa.Column[Any], Any] | None,
    order_by: tuple[sa.Column[Any], ...],
) -> list[tuple[Any, ...]]:
    equal_column = None if equal is None else equal[0]
    sql, processors = _sqlite_select(conn.dialect, columns, key, len(chunk), equal_column, order_by)
    with _driver_cursor(conn, sql) as cursor:
        cursor.execute(sql, chunk if equal is None else [*chunk, equal[1]])
        raw = cursor.fetchall()
    if not any(processors):
        return raw
    return [
        tuple(
            value if process is None else process(value)
            for process, value in zip(processors, row, strict=True)
        )
        for row in raw
    ]


def _sqlite_select(
    dialect: sa.Dialect,
    columns: tuple[sa.Column[Any], ...],
    key: sa.Column[Any],
    count: int,
    equal: sa.Column[Any] | None,
    order_by: tuple[sa.Column[Any], ...],
) -> tuple[str, tuple[Callable[[Any], Any] | None, ...]]:
    cache_key = (tuple(map(id, columns)), id(key), count, id(equal), tuple(map(id, order_by)))
    found = _SELECTS.get(cache_key)
    if found is None:
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(c.name) for c in columns)
        sql = (
            f"SELECT {names} FROM {quote(key.table.name)} "  # type: ignore[attr-defined]
            f"WHERE {quote(key.name)} IN ({', '.join('?' * count)})"
        )
        if equal is not None:
            sql += f" AND {quote(equal.name)} = ?"
        if order_by:
            sql += " ORDER BY " + ", ".join(quote(c.name) for c in order_by)
        processors = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        found = _SELECTS[cache_key] = (sql, processors)
    return found
