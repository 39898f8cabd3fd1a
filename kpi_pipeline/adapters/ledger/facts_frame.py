"""``Ledger.lead_facts_frame``'s columnar read: the lead facts of a creation window as a
DataFrame without a Python object per cell on the way, built directly in the dtypes the
rollups have always had (datetime64[ns, UTC], float64, object with None; ``typed``).

- PostgreSQL (``postgres_facts.py``): binary ``COPY`` into Arrow through
  ``adbc-driver-postgresql``. The server packs each row into three fields (the Id; the 8
  times and numbers as 64 bytes of int64 microseconds and IEEE doubles; the 8 other strings
  NUL-terminated), because the driver's decoding costs per field: 3 fields a row instead of
  17 took the client's CPU for 1M leads from about 3 s to 0.7 s. A large window's two halves
  of the Id range are read over two connections in one exported snapshot.
- SQLite, a window of ``CHILD_MIN_ROWS`` rows or more: ``adbc-driver-sqlite``'s C reader in
  child processes (``sqlite_arrow_child.py``; two at once, one per half of the Id range, from
  ``SPLIT_MIN_ROWS``), each sending an Arrow IPC stream over a pipe. Never in this process:
  the driver links its own copy of the SQLite library, and two copies in one process break
  each other's POSIX file locks on the same database (SQLite's "multiple copies of SQLite
  linked into the same application" hazard: a stale snapshot, then "disk I/O error").
  Between processes SQLite's locks work as usual. The two halves are two read transactions,
  so a commit landing between them can show in one half only, as if the read had happened
  a moment later for those leads; each lead's row is read whole.
- SQLite, a smaller window (or an in-memory database): the ledger's own driver cursor, in
  chunks, each column converted at once (a child costs about 0.3 s to start).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.core.kpis.lead_facts import (
    DATETIME_COLUMNS,
    NUMBER_COLUMNS,
    empty_lead_facts,
    lead_facts_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS: tuple[str, ...] = lead_facts_columns()
CHUNK_ROWS = 200_000
# SQLite: from this many rows the window is read by ADBC in child processes (starting one
# costs about 0.3 s of CPU, the ledger's own cursor about 0.7 s per 100,000 rows), and from
# SPLIT_MIN_ROWS by two children at once, one per half of the Id range.
CHILD_MIN_ROWS = 50_000
SPLIT_MIN_ROWS = 200_000
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's SQLite DateTime stores UTCDateTime
_SELECT = ", ".join(f'"{name}"' for name in COLUMNS)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return value.astimezone(UTC)


def creation_window(
    created_from: datetime | None, created_to: datetime | None
) -> tuple[str, list[Any]]:
    """The WHERE clause of a creation window (placeholders ``?``) and its aware UTC bounds."""
    where, values = ['"CreatedDate" IS NOT NULL'], []
    if created_from is not None:
        where.append('"CreatedDate" >= ?')
        values.append(_aware(created_from))
    if created_to is not None:
        where.append('"CreatedDate" < ?')
        values.append(_aware(created_to))
    return " AND ".join(where), values


def _query(where: str) -> str:
    return f'SELECT {_SELECT} FROM lead_facts WHERE {where} ORDER BY "Id"'


# --- SQLite ---------------------------------------------------------------------------------


def sqlite_frame(
    conn: sa.Connection, created_from: datetime | None, created_to: datetime | None
) -> pd.DataFrame:
    """A small window through the ledger's own cursor; a large one through ADBC's C reader
    in child processes (``sqlite_arrow_child``), one per half of the Id range."""
    import pyarrow as pa

    where, values = creation_window(created_from, created_to)
    params = [value.strftime(_SQLITE_TIME) for value in values]
    database = conn.engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return _sqlite_cursor_frame(conn, where, params)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        (rows,) = cursor.execute(
            f"SELECT count(*) FROM lead_facts WHERE {where}", params
        ).fetchone()
        if rows < CHILD_MIN_ROWS:
            return _sqlite_cursor_frame(conn, where, params)
        (table_rows,) = cursor.execute("SELECT count(*) FROM lead_facts").fetchone()
        # Most of the table: walk the primary key in Id order with the window as a filter (the
        # unary + keeps SQLite off the CreatedDate index), so nothing is sorted (about 1 s for
        # 1M rows), split at the middle Id for two children. A smaller part: that index, then
        # a sort, in one child.
        by_id = rows * 2 >= table_rows
        split = _id_at(cursor, table_rows // 2) if by_id and rows >= SPLIT_MIN_ROWS else None
    finally:
        cursor.close()
    if by_id:
        where = where.replace('"CreatedDate"', '+"CreatedDate"')
    parts = [(where, params)]
    if split is not None:
        parts = [
            (f'{where} AND "Id" < ?', [*params, split]),
            (f'{where} AND "Id" >= ?', [*params, split]),
        ]
    tables = _read_in_children(database, parts)
    if all(table.schema.equals(tables[0].schema) for table in tables):
        return _from_arrow(pa.concat_tables(tables))  # no copy: one chunk per child
    # A child kept a time column as text (another ISO form) that the other one cast.
    return pd.concat([_from_arrow(table) for table in tables], ignore_index=True)


def _id_at(cursor: Any, offset: int) -> str | None:
    """The ``offset``-th Id in Id order, read off the primary-key index (no sort)."""
    found = cursor.execute(
        'SELECT "Id" FROM lead_facts ORDER BY "Id" LIMIT 1 OFFSET ?', [offset]
    ).fetchone()
    return found[0] if found else None


def _read_in_children(database: str, parts: list[tuple[str, list[str]]]) -> list[pa.Table]:
    """Each (where, params) read by its own ``sqlite_arrow_child`` process, all at once."""
    import json
    import subprocess
    import sys
    import threading
    from pathlib import Path

    import pyarrow as pa

    script = str(Path(__file__).with_name("sqlite_arrow_child.py"))
    children = []
    for where, params in parts:
        request = {
            "database": database,
            "count_sql": f"SELECT count(*) FROM lead_facts WHERE {where}",
            "sql": _query(where),
            "params": params,
            "times": list(DATETIME_COLUMNS),
            "numbers": list(NUMBER_COLUMNS),
        }
        children.append(
            subprocess.Popen(
                [sys.executable, "-I", script, json.dumps(request)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs: list[tuple[bytes, bytes]] = [(b"", b"")] * len(children)

    def drain(index: int) -> None:  # both pipes at once, so no child blocks on a full one
        outputs[index] = children[index].communicate()

    drainers = [threading.Thread(target=drain, args=(i,)) for i in range(len(children))]
    for drainer in drainers:
        drainer.start()
    for drainer in drainers:
        drainer.join()
    tables = []
    for child, (out, err) in zip(children, outputs, strict=True):
        if child.returncode != 0:
            raise RuntimeError(
                f"lead_facts read ({script}) exited with {child.returncode}: "
                f"{err.decode(errors='replace')[-2000:]}"
            )
        tables.append(pa.ipc.open_stream(pa.py_buffer(out)).read_all())
    return tables


def _sqlite_cursor_frame(conn: sa.Connection, where: str, params: list[str]) -> pd.DataFrame:
    """The driver cursor's rows in chunks of ``CHUNK_ROWS``, each column converted at once."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_query(where), params)
        chunks = []
        while rows := cursor.fetchmany(CHUNK_ROWS):
            chunk = pd.DataFrame.from_records(rows, columns=list(COLUMNS), coerce_float=False)
            for name in DATETIME_COLUMNS:
                chunk[name] = pd.to_datetime(chunk[name], format="ISO8601", utc=True)
            chunks.append(chunk)
    finally:
        cursor.close()
    if not chunks:
        return empty_lead_facts()
    return typed(pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0])


# --- Arrow to pandas ------------------------------------------------------------------------


def _from_arrow(table: pa.Table) -> pd.DataFrame:
    """Columns as ``typed`` takes them: UTC times, floats, strings as objects with None."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name in COLUMNS:
        column = table.column(name)
        if name in DATETIME_COLUMNS:
            columns[name] = utc_times(column)
        elif name in NUMBER_COLUMNS:
            columns[name] = column.cast(pa.float64()).to_numpy()
        elif name == "Id":  # the primary key: every value distinct, nothing to share
            columns[name] = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
        elif pa.types.is_dictionary(column.type):  # encoded by the child
            columns[name] = pd.Series(_dictionary_objects(column), dtype=object)
        else:  # an all-NULL column arrives as int64 from SQLite
            columns[name] = pd.Series(_objects(column.cast(pa.string())), dtype=object)
    return pd.DataFrame(columns)


def _dictionary_objects(column: pa.ChunkedArray) -> np.ndarray:
    """A dictionary-encoded string column as an object array with None: one Python str per
    distinct value of each chunk (each child sends its own dictionary)."""
    parts = []
    for chunk in column.chunks:
        values = np.append(chunk.dictionary.to_numpy(zero_copy_only=False), None)
        parts.append(values[chunk.indices.fill_null(len(chunk.dictionary)).to_numpy()])
    return np.concatenate(parts) if parts else np.array([], dtype=object)


def _objects(column: pa.ChunkedArray) -> np.ndarray:
    """Strings as an object array with None, one Python str per distinct value: owners,
    templates, rules and sources repeat, so most cells share an object instead of each
    building its own (and pandas is not left to infer its Arrow-backed ``str`` dtype)."""
    import pyarrow as pa

    encoded = column.combine_chunks().dictionary_encode()
    if isinstance(encoded, pa.ChunkedArray):  # an empty column stays chunked
        encoded = pa.concat_arrays(encoded.chunks) if encoded.num_chunks else None
    if encoded is None or len(encoded) == 0:
        return np.array([], dtype=object)
    values = np.append(encoded.dictionary.to_numpy(zero_copy_only=False), None)
    return values[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()]


def utc_times(column: pa.ChunkedArray) -> pd.Series:
    import pyarrow as pa

    utc = pa.timestamp("ns", tz="UTC")  # what typed() gives, so it converts nothing
    if pa.types.is_timestamp(column.type) or column.null_count == len(column):
        return column.cast(utc).to_pandas()
    try:  # SQLite text, naive UTC ('YYYY-MM-DD HH:MM:SS.ffffff' as UTCDateTime writes it)
        return column.cast(pa.timestamp("us")).cast(utc).to_pandas()
    except pa.ArrowInvalid:  # text in another ISO 8601 form, written by hand or older code
        times = pd.to_datetime(column.to_pandas(), format="ISO8601", utc=True)
        return times.astype("datetime64[ns, UTC]")


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The dtypes the rollups expect: datetime64[ns, UTC], float64, object with None."""
    for name in DATETIME_COLUMNS:
        frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[ns, UTC]")
    for name in NUMBER_COLUMNS:
        frame[name] = pd.to_numeric(frame[name]).astype("float64")
    for name in COLUMNS:
        if name not in DATETIME_COLUMNS and name not in NUMBER_COLUMNS:
            frame[name] = frame[name].astype("object").where(frame[name].notna(), None)
    return frame[list(COLUMNS)]
