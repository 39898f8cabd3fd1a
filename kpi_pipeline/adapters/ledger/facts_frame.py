"""``Ledger.lead_facts_frame``'s columnar read: the lead facts of a creation window as a
DataFrame without a Python object per cell on the way.

PostgreSQL: ``COPY (SELECT ...) TO STDOUT`` as CSV, times as epoch microseconds, parsed by
``pandas.read_csv`` in C. SQLite: the driver cursor's rows in chunks of 200,000 (so peak
memory holds one chunk of tuples), each column converted at once (times are stored as
naive UTC text, ``UTCDateTime``).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS, NUMBER_COLUMNS, lead_facts_columns

COLUMNS: tuple[str, ...] = lead_facts_columns()
CHUNK_ROWS = 200_000
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's SQLite DateTime stores UTCDateTime


def _quoted(name: str) -> str:
    return f'"{name}"'


def _window(created_from: datetime | None, created_to: datetime | None) -> tuple[str, list[Any]]:
    """The WHERE clause of a creation window (driver placeholders ``?``) and its values."""
    where, values = ['"CreatedDate" IS NOT NULL'], []
    if created_from is not None:
        where.append('"CreatedDate" >= ?')
        values.append(created_from)
    if created_to is not None:
        where.append('"CreatedDate" < ?')
        values.append(created_to)
    return " AND ".join(where), values


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return value.astimezone(UTC)


def sqlite_frame(
    conn: sa.Connection, created_from: datetime | None, created_to: datetime | None
) -> pd.DataFrame:
    where, values = _window(created_from, created_to)
    sql = f'SELECT {", ".join(map(_quoted, COLUMNS))} FROM lead_facts WHERE {where} ORDER BY "Id"'
    params = [_aware(v).strftime(_SQLITE_TIME) for v in values]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        chunks = []
        while rows := cursor.fetchmany(CHUNK_ROWS):
            chunk = pd.DataFrame.from_records(rows, columns=list(COLUMNS), coerce_float=False)
            for name in DATETIME_COLUMNS:
                chunk[name] = pd.to_datetime(chunk[name], format="ISO8601", utc=True)
            chunks.append(chunk)
    finally:
        cursor.close()
    if not chunks:
        return pd.DataFrame({name: pd.Series([], dtype="object") for name in COLUMNS})
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def postgres_frame(
    conn: sa.Connection, created_from: datetime | None, created_to: datetime | None
) -> pd.DataFrame:
    select = ", ".join(
        f"(extract(epoch FROM {_quoted(n)}) * 1000000)::bigint AS {_quoted(n)}"
        if n in DATETIME_COLUMNS
        else _quoted(n)
        for n in COLUMNS
    )
    where, values = _window(created_from, created_to)
    raw = conn.connection.driver_connection  # psycopg2: COPY cannot take bind parameters
    cursor = raw.cursor()  # type: ignore[union-attr]
    try:
        query = cursor.mogrify(
            f'SELECT {select} FROM lead_facts WHERE {where.replace("?", "%s")} ORDER BY "Id"',
            [_aware(v) for v in values],
        ).decode()
        buffer = io.StringIO()
        cursor.copy_expert(
            f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER, NULL '\\N')", buffer
        )
    finally:
        cursor.close()
    buffer.seek(0)
    frame = pd.read_csv(
        buffer,
        dtype={
            n: "float64" if n in NUMBER_COLUMNS or n in DATETIME_COLUMNS else object
            for n in COLUMNS
        },
        keep_default_na=False,
        na_values=["\\N"],
    )
    for name in DATETIME_COLUMNS:
        frame[name] = pd.to_datetime(frame[name], unit="us", utc=True)
    return frame


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
