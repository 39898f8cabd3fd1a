"""The ledger's SQLAlchemy engine: SQLite (a file, WAL, busy timeout, IMMEDIATE write
transactions) or PostgreSQL, with the ledger's JSON codec; and ``LedgerError``, the error
for bad input to any part of the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Many-row statements on PostgreSQL through psycopg2's execute_batch: pages of 100
# statements a round trip instead of one each. SQLAlchemy batches only plain INSERT
# constructs by itself; the ledger's bulk writes are upserts (ON CONFLICT) and text
# statements, which psycopg2's executemany sent one round trip a row. In a catch-up into
# PostgreSQL that was about a third of the stream worker's time (bench/RESULTS.md,
# Catch-up). No executemany result's rowcount is read (execute_batch leaves it unset). The
# ledger's own text upserts go faster still, as multi-row VALUES (``bulk.executemany``).
PG_EXECUTEMANY_MODE = "values_plus_batch"


class LedgerError(ValueError):
    """Bad input to the ledger (the message names the input and the fix)."""


def create_ledger_engine(url: str, *, scratch: bool = False) -> sa.Engine:
    """An engine configured for the ledger: WAL + busy timeout + IMMEDIATE writes on SQLite.

    ``scratch``: the database is thrown away afterwards (``kpi-pipeline replay``'s), so
    SQLite does not sync its commits to disk; a crash loses nothing that a re-run does not
    rebuild from the same input."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, synchronous="OFF" if scratch else "FULL")
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            parsed, pool_pre_ping=True, executemany_mode=PG_EXECUTEMANY_MODE, **JSON_CODEC
        )
    raise LedgerError(
        f"ledger URL {parsed.render_as_string(hide_password=True)!r} uses an unsupported database; "
        "use sqlite:///path/to/ledger.db or postgresql+psycopg2://user@host/db"
    )


AUTOVACUUM_OFF = (
    "autovacuum is off on this PostgreSQL server: on ledger tables that were never analyzed, "
    "the keyed reads of the inbox (by channel and replay id) and of records and the outbox "
    "(by object and id) scan a whole channel or object; turn autovacuum on, or run ANALYZE "
    "on the ledger database after a large catch-up or load (DEPLOYMENT.md, section 3)"
)


def server_warnings(engine: sa.Engine) -> list[str]:
    """What in the database server's settings works against the ledger, each with its fix
    (``kpi-pipeline ledger upgrade`` prints them)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        autovacuum = conn.execute(sa.text("SHOW autovacuum")).scalar_one()
    return [] if autovacuum == "on" else [AUTOVACUUM_OFF]


def _json_dumps(value: Any) -> str:
    # NaN and infinities become null (PostgreSQL's json refuses the stdlib's NaN anyway).
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (record states, decisions, outbox fields) through orjson: the replay profile
# after set-based writes spent about 15 % of its time in the stdlib json module, which
# orjson encodes about 3x and decodes about 1.4x faster (bench/RESULTS.md, Replay).
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _sqlite_engine(url: sa.URL, *, synchronous: str) -> sa.Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        # One shared connection, or every new connection would see a new empty database.
        poolclass=StaticPool if in_memory else None,
        **JSON_CODEC,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN would defeat BEGIN IMMEDIATE; SQLAlchemy emits it.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
