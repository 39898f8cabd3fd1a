"""The store's SQLite file: tables, connections, counters and transactions.

``StoreDatabase`` is the base the store's parts build on (records written, records read,
the change feed): it opens one connection per thread (and per process after a fork) in WAL
mode, creates the tables and seeds the directory on first use, and groups writes into
Salesforce transactions (``BEGIN IMMEDIATE``, so writers in several threads or processes
serialize and replay ids follow commit order)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.store.directory import (
    SEED_CREATED_MS,
    SEED_QUEUES,
    SEED_USERS,
    directory_rows,
)
from kpi_pipeline.sandbox.store.errors import SandboxStoreError

DEFAULT_RETENTION_MS = 72 * 3600 * 1000


_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS records (
    sobject TEXT NOT NULL,
    id TEXT NOT NULL PRIMARY KEY,
    fields TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_by_modified ON records (sobject, modified_ms);
CREATE TABLE IF NOT EXISTS changes (
    replay INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    header TEXT NOT NULL,
    fields TEXT NOT NULL,
    commit_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_commit ON changes (commit_ts);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS field_history (
    id TEXT NOT NULL PRIMARY KEY,
    sobject TEXT NOT NULL,
    record_id TEXT NOT NULL,
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    data_type TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS field_history_by_record ON field_history (sobject, record_id);
CREATE TABLE IF NOT EXISTS custom_fields (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    name TEXT NOT NULL,
    sf_type TEXT NOT NULL,
    UNIQUE (entity, name)
);
"""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Transaction:
    """One Salesforce transaction: its changes share transactionKey and commitTimestamp."""

    store: StoreDatabase
    conn: sqlite3.Connection
    key: str
    commit_ms: int
    commit_number: int
    changed: set[str] = field(default_factory=set)
    sequence: int = 0
    changes: list[StoredChange] = field(default_factory=list)
    open: bool = True


class StoreDatabase:
    """The SQLite file under the sandbox store: connections, tables, counters, transactions."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
        retention_ms: int = DEFAULT_RETENTION_MS,
        track_owner_history: bool = True,
    ) -> None:
        self.path = Path(path)
        self.track_owner_history = track_owner_history
        if self.path.is_dir():
            raise SandboxStoreError(
                f"sandbox store path {self.path} is a directory; pass a file path like {self.path / 'sandbox.db'}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.retention_ms = retention_ms
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._changed = threading.Condition()
        self._tx_local = threading.local()
        self._init_schema()
        self.schemas = self._load_custom_fields()

    # -- connections ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (any thread)."""
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _init_schema(self) -> None:
        conn = self._conn()
        conn.executescript(_SCHEMA_SQL)
        conn.execute("BEGIN IMMEDIATE")
        try:
            seeded = conn.execute("SELECT 1 FROM records WHERE sobject = 'User' LIMIT 1").fetchone()
            if not seeded:
                self._seed_directory(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _load_custom_fields(self) -> SchemaSet:
        schemas = DEFAULT_SCHEMAS
        rows = (
            self._conn()
            .execute("SELECT entity, name, sf_type FROM custom_fields ORDER BY position")
            .fetchall()
        )
        for entity, name, sf_type in rows:
            schemas = schemas.with_custom_field(entity, name, sf_type)
        return schemas

    def add_custom_field(self, entity: str, name: str, sf_type: str) -> SchemaSet:
        """Add a custom field to an entity, as an admin does in Setup: the entity's change
        events and GetSchema answers carry it from now on (under a new schema id), and REST
        reads and writes it. Kept in the store file; a process that opened the store before
        sees it once it reopens the store. Returns the org's new schema set."""
        try:
            schemas = self.schemas.with_custom_field(entity, name, sf_type)
        except ValueError as exc:
            raise SandboxStoreError(str(exc)) from None
        self._conn().execute(
            "INSERT INTO custom_fields (entity, name, sf_type) VALUES (?, ?, ?)",
            (entity, name, sf_type),
        )
        self.schemas = schemas
        return schemas

    def _seed_directory(self, conn: sqlite3.Connection) -> None:
        for sobject, record_id, values in directory_rows():
            conn.execute(
                "INSERT INTO records (sobject, id, fields, created_ms, modified_ms) VALUES (?, ?, ?, ?, ?)",
                (sobject, record_id, json.dumps(values), SEED_CREATED_MS, SEED_CREATED_MS),
            )
        conn.execute("INSERT OR REPLACE INTO counters VALUES ('id:005', ?)", (len(SEED_USERS),))
        conn.execute("INSERT OR REPLACE INTO counters VALUES ('id:00G', ?)", (len(SEED_QUEUES),))

    def _next_counter(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            (name,),
        ).fetchone()
        return int(row[0])

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, at_ms: int | None = None) -> Iterator[Transaction]:
        """Group writes into one Salesforce transaction: one transactionKey, sequenceNumber
        1..n in write order, one commitTimestamp (``at_ms``, default now). Pass the yielded
        object as ``transaction=`` to the writers. All or nothing: an exception rolls back."""
        conn = self._conn()
        if getattr(self._tx_local, "active", None) is not None:
            raise SandboxStoreError(
                "a sandbox transaction is already open in this thread; nest writes in it instead"
            )
        commit_ms = self._now(at_ms)
        conn.execute("BEGIN IMMEDIATE")
        tx: Transaction | None = None
        try:
            number = self._next_counter(conn, "commit")
            tx = Transaction(self, conn, _transaction_key(number), commit_ms, 10_000_000 + number)
            self._tx_local.active = tx
            yield tx
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self._tx_local.active = None
            if tx is not None:
                tx.open = False
        self._notify()

    @contextmanager
    def _write(self, transaction: Transaction | None, at_ms: int | None) -> Iterator[Transaction]:
        if transaction is None:
            with self.transaction(at_ms=at_ms) as tx:
                yield tx
            return
        if transaction.store is not self or not transaction.open:
            raise SandboxStoreError("transaction= must be an open transaction of this store")
        if at_ms is not None and at_ms != transaction.commit_ms:
            raise SandboxStoreError(
                f"at_ms={at_ms} differs from the transaction's commit time {transaction.commit_ms}; "
                "changes in one transaction share one commit timestamp"
            )
        yield transaction

    def _now(self, at_ms: int | None) -> int:
        return int(self.clock() if at_ms is None else at_ms)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _transaction_key(number: int) -> str:
    """A UUID-shaped transactionKey, deterministic in the store's commit sequence."""
    return str(
        uuid.UUID(bytes=hashlib.sha256(f"sandbox-transaction-{number}".encode()).digest()[:16])
    )
