"""``Ledger.lead_facts_frame`` on PostgreSQL: ``adbc-driver-postgresql`` runs
``COPY (SELECT ...) TO STDOUT`` in binary into Arrow, and numpy and Arrow unpack it
(``_from_packed``) into the dtypes ``facts_frame.typed`` gives.

A window of ``SPLIT_MIN_ROWS`` rows or more is read as two halves of its Id range
over two connections at once, so the server packs them on two backends while the client
decodes on two threads (1M leads: median 1.65 s against 2.58 s over one connection, in
paired runs; bench/RESULTS.md, fourth pass). Both read one snapshot: the first connection's REPEATABLE READ
transaction exports it (``pg_export_snapshot``) and the second imports it (``SET TRANSACTION
SNAPSHOT``) before reading, so the halves see exactly the same commits, as one read would.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger.facts_frame import COLUMNS, creation_window, utc_times
from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS, NUMBER_COLUMNS, empty_lead_facts

if TYPE_CHECKING:
    import pyarrow as pa

# From this many rows (the planner's estimate) the window is read over two connections; a
# second connection and thread cost the client about 10 ms.
SPLIT_MIN_ROWS = 200_000

# The server packs each row into three fields: the Id, the eight times and numbers as one
# 64-byte value, the eight other strings as one value. ADBC's decoder spends most of its time
# per field (about 0.15 us each), so 3 fields a row instead of 17 cut the client's CPU by more
# than half; the packing costs the server less than it saves the client. Times go as
# timestamptz_send's int64 microseconds since 2000-01-01, NULL as INT64_MIN; numbers as
# float8send's IEEE doubles, NULL as NaN (the frame's "none" anyway); strings as
# '=' + UTF-8 bytes + NUL, NULL as a bare NUL (PostgreSQL text never holds a NUL byte).
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_PG_NULL_TIME = np.iinfo(np.int64).min
_PACKED_TEXT = tuple(
    name
    for name in COLUMNS
    if name != "Id" and name not in DATETIME_COLUMNS and name not in NUMBER_COLUMNS
)
_PACKED_NUMBERS_SQL = " || ".join(
    [
        f"""coalesce(timestamptz_send("{name}"), '\\x8000000000000000'::bytea)"""
        for name in DATETIME_COLUMNS
    ]
    + [
        f"""coalesce(float8send("{name}"), '\\x7ff8000000000000'::bytea)"""
        for name in NUMBER_COLUMNS
    ]
)
_PACKED_TEXT_SQL = " || ".join(
    f"""coalesce('\\x3d'::bytea || textsend("{name}"), '\\x'::bytea) || '\\x00'::bytea"""
    for name in _PACKED_TEXT
)


def _packed_query(where: str) -> str:
    return (
        f'SELECT "Id", {_PACKED_NUMBERS_SQL} AS numbers, {_PACKED_TEXT_SQL} AS texts'
        f' FROM lead_facts WHERE {where} ORDER BY "Id"'
    )


def postgres_frame(
    conn: sa.Connection, created_from: datetime | None, created_to: datetime | None
) -> pd.DataFrame:
    """The window's lead facts, sorted by Id, in one snapshot (over two connections when the
    window is large)."""
    import pyarrow as pa

    where = _literal_window(created_from, created_to)
    split = _middle_id(conn, where)
    url = conn.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with _arrow_connection(url) as first:
        cursor = first.cursor()
        try:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if split is None:
                tables = [_fetch(cursor, where)]
            else:
                cursor.execute("SELECT pg_export_snapshot()")
                (snapshot,) = cursor.fetchone()
                with ThreadPoolExecutor(max_workers=1) as second:
                    upper = second.submit(
                        _read_in_snapshot, url, snapshot, f'{where} AND "Id" >= {_quote(split)}'
                    )
                    lower = _fetch(cursor, f'{where} AND "Id" < {_quote(split)}')
                    # The export stays valid while this transaction is open: end it only
                    # after the other connection has read.
                    tables = [lower, upper.result()]
            cursor.execute("COMMIT")
        finally:
            cursor.close()
    return _from_packed(pa.concat_tables(tables))


def _literal_window(created_from: datetime | None, created_to: datetime | None) -> str:
    """The window's WHERE clause with its bounds as literals: ADBC's PostgreSQL driver uses
    COPY (binary) only for a query without bind parameters. They are datetimes formatted
    here, never caller text."""
    where, values = creation_window(created_from, created_to)
    for value in values:
        where = where.replace("?", f"'{value.isoformat()}'::timestamptz", 1)
    return where


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _arrow_connection(url: str) -> Any:
    """An ADBC connection in autocommit mode (the caller opens its own transaction), its
    text sent as UTF-8 (what ``textsend`` packs)."""
    import adbc_driver_postgresql.dbapi as adbc_postgresql

    connection = adbc_postgresql.connect(url, autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute("SET client_encoding = 'UTF8'")
    return connection


def _middle_id(conn: sa.Connection, where: str) -> str | None:
    """An Id near the middle of the window, None when the planner expects fewer than
    ``SPLIT_MIN_ROWS`` rows in it. Both come from the statistics ``ANALYZE`` (autovacuum)
    keeps, not from a count: counting 1M leads and seeking the middle one cost the server
    0.3 s, most of what the second connection saves. A window of half the table or more is
    split at the median of the table's Id histogram, a smaller one at its own middle row.
    Any split is correct (the halves are ``< split`` and ``>= split`` in one snapshot); a
    good one only balances them. Asked on the ledger's own connection: ADBC wraps every
    query in ``COPY``, which ``EXPLAIN`` cannot be."""
    (plan,) = conn.exec_driver_sql(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM lead_facts WHERE {where}"
    ).one()
    expected = int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
    if expected < SPLIT_MIN_ROWS:
        return None
    table_rows, bounds = conn.exec_driver_sql(
        "SELECT c.reltuples, s.histogram_bounds::text::text[] FROM pg_class c"
        " LEFT JOIN pg_stats s ON s.schemaname = current_schema()"
        " AND s.tablename = c.relname AND s.attname = 'Id'"
        " WHERE c.oid = 'lead_facts'::regclass"
    ).one()
    if bounds and expected * 2 >= table_rows:
        return bounds[len(bounds) // 2]
    return conn.exec_driver_sql(
        f'SELECT "Id" FROM lead_facts WHERE {where} ORDER BY "Id" OFFSET {expected // 2} LIMIT 1'
    ).scalar()


def _fetch(cursor: Any, where: str) -> pa.Table:
    cursor.execute(_packed_query(where))
    return cursor.fetch_arrow_table()


def _read_in_snapshot(url: str, snapshot: str, where: str) -> pa.Table:
    """``where``'s packed rows read in the exported ``snapshot``, on a connection of its own."""
    with _arrow_connection(url) as connection:
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT {_quote(snapshot)}")
            table = _fetch(cursor, where)
            cursor.execute("COMMIT")
            return table
        finally:
            cursor.close()


def _from_packed(table: pa.Table) -> pd.DataFrame:
    """The frame from ``_packed_query``'s three columns, in ``typed``'s dtypes."""
    import pyarrow as pa

    if table.num_rows == 0:
        return empty_lead_facts()
    columns: dict[str, Any] = {}
    columns["Id"] = pd.Series(table.column("Id").to_numpy(zero_copy_only=False), dtype=object)
    numbers = _binary_bytes(table.column("numbers")).view(">i8").reshape(table.num_rows, -1)
    for index, name in enumerate(DATETIME_COLUMNS):
        micros = numbers[:, index].astype(np.int64)
        nulls = micros == _PG_NULL_TIME
        if (micros[~nulls] > np.iinfo(np.int64).max - _PG_EPOCH_US).any():
            raise ValueError(f"{name}: a time past what pandas holds (infinity?)")
        unix = pa.array(micros + _PG_EPOCH_US, mask=nulls, type=pa.int64())
        columns[name] = utc_times(pa.chunked_array([unix.cast(pa.timestamp("us", tz="UTC"))]))
    doubles = numbers[:, len(DATETIME_COLUMNS) :].view(">f8")
    for index, name in enumerate(NUMBER_COLUMNS):
        columns[name] = doubles[:, index].astype(np.float64)
    for name, objects in zip(_PACKED_TEXT, _packed_texts(table), strict=True):
        columns[name] = pd.Series(objects, dtype=object)
    return pd.DataFrame({name: columns[name] for name in COLUMNS})


def _binary_bytes(column: pa.ChunkedArray) -> np.ndarray:
    """The values of a binary column back to back, as one byte array (no NULLs in it)."""
    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError("a packed lead_facts value is NULL")
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        parts.append(data[offsets[0] : offsets[-1]])
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _packed_texts(table: pa.Table) -> list[np.ndarray]:
    """The packed strings as one object array per column, one Python str per distinct value
    (owners, templates, rules and sources repeat, so most cells share an object)."""
    import pyarrow as pa

    data = _binary_bytes(table.column("texts"))
    ends = np.flatnonzero(data == 0) + 1  # every field ends with its NUL
    if len(ends) != table.num_rows * len(_PACKED_TEXT):
        raise ValueError("packed lead_facts strings: wrong number of fields")
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)])
    fields = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    encoded = fields.dictionary_encode()
    distinct = [
        None if value == b"\x00" else value[1:-1].decode("utf-8")
        for value in encoded.dictionary.to_pylist()
    ]
    objects = np.array(distinct, dtype=object)
    codes = encoded.indices.to_numpy().reshape(table.num_rows, len(_PACKED_TEXT))
    return [objects[codes[:, index]] for index in range(len(_PACKED_TEXT))]
