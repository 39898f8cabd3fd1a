"""The child process of ``facts_frame``'s SQLite read: runs one query through
``adbc-driver-sqlite`` and writes the result to stdout as an Arrow IPC stream.

Why a child: the ADBC driver links its own copy of the SQLite library, and two copies in ONE
process break each other's POSIX file locks on the same database (a stale snapshot, then
"disk I/O error"). Between two processes, SQLite's locks work as they always do.

Run as a script by path (``python -I <this file> <request JSON>``), never as
``-m kpi_pipeline...``: importing the package would import the whole ledger (SQLAlchemy,
alembic; about 2.5 s of CPU), and this only needs pyarrow and the driver. So this file
imports nothing from kpi_pipeline. The request: {"database", "count_sql", "sql", "params",
"times", "numbers"} (the last two: column names).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def read(request: dict[str, Any]) -> Any:
    """The query's rows as one Arrow table, read in one read transaction (one snapshot)."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    params = request["params"]
    # autocommit off: the count and the read share one read transaction, so the one batch
    # sized from the count holds every row. One batch because the driver infers each
    # column's type from its batch: NULLs first would make a text column int64.
    with adbc_sqlite.connect(request["database"]) as conn, conn.cursor() as cursor:
        cursor.execute(request["count_sql"], params)
        (rows,) = cursor.fetchone()  # type: ignore[misc]
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(rows + 1)})
        cursor.execute(request["sql"], params)
        table = cursor.fetch_arrow_table()
        conn.rollback()
    return _cast(table, request["times"], request["numbers"])


def _cast(table: Any, times: list[str], numbers: list[str]) -> Any:
    """Every column in one type whatever its rows (the driver makes an all-NULL column
    int64), so the parent can join two children's tables without copying: numbers float64,
    the Id string, other text dictionary-encoded, times (text 'YYYY-MM-DD HH:MM:SS.ffffff',
    naive UTC) cast to timestamps. Done here, in the child, where the CPU is spare. A time
    column in another ISO form stays text for the parent to parse."""
    import pyarrow as pa

    for index, name in enumerate(table.column_names):
        column = table.column(index)
        if name in numbers:
            cast = column.cast(pa.float64())
        elif name not in times and name != "Id":
            # Owners, templates, rules repeat: the parent makes one str per distinct value.
            cast = column.cast(pa.string()).dictionary_encode()
        elif name not in times or column.null_count == len(column):
            cast = column.cast(pa.timestamp("us") if name in times else pa.string())
        else:
            try:
                cast = column.cast(pa.timestamp("us"))
            except pa.ArrowInvalid:
                cast = column.cast(pa.string())
        table = table.set_column(index, name, cast)
    return table


def main() -> None:
    import pyarrow as pa

    table = read(json.loads(sys.argv[1]))
    with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as writer:
        writer.write_table(table)


if __name__ == "__main__":
    main()
