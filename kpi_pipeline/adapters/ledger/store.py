"""The lead ledger: one class, ``Ledger``, over SQLAlchemy Core, composed of one mixin per
responsibility: CDC staging (``inbox.py``), dead letters (``dead_letters.py``), workload
state (``state.py``: records, lead facts, memos), the outbox, sends, the replay store and
leases; re-sync windows live here. The engine (``engine.py``) is SQLite (a file, WAL, busy
timeout) by default, PostgreSQL in production, same code. Every write is idempotent because
delivery is at-least-once end to end (CONTRACTS.md §1): rows are keyed by what they are
about and inserted with ``ON CONFLICT DO NOTHING``.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that two processes
(the sensor and a run) queue on the busy timeout instead of failing with "database is
locked" when a read lock would have to be upgraded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import migrations
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.batch import BatchWork
from kpi_pipeline.adapters.ledger.dead_letters import DeadLetter, DeadLetterMixin
from kpi_pipeline.adapters.ledger.engine import LedgerError, create_ledger_engine
from kpi_pipeline.adapters.ledger.inbox import BatchInfo, InboxMixin, StagedBatch, batch_id_for
from kpi_pipeline.adapters.ledger.leases import LeaseMixin
from kpi_pipeline.adapters.ledger.memos import _INSERT_DECISION
from kpi_pipeline.adapters.ledger.outbox import OutboxMixin
from kpi_pipeline.adapters.ledger.replay_store import ReplayStoreMixin
from kpi_pipeline.adapters.ledger.sends import SendsMixin
from kpi_pipeline.adapters.ledger.sql import from_row, insert_ignore, required_row
from kpi_pipeline.adapters.ledger.state import WorkloadStateMixin
from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.resync_windows import WINDOW_CLOSED, WINDOW_OPEN, ResyncGap, ResyncWindow

# Names other modules import from here, where they lived before the split.
__all__ = [
    "BatchInfo",
    "DeadLetter",
    "Ledger",
    "LedgerError",
    "ResyncWindow",
    "StagedBatch",
    "batch_id_for",
    "create_ledger_engine",
]

_UNKNOWN_WINDOW = "no resync window with id {}; list them with `kpi-pipeline ledger resync-windows`"


class Ledger(
    WorkloadStateMixin,
    InboxMixin,
    DeadLetterMixin,
    OutboxMixin,
    SendsMixin,
    ReplayStoreMixin,
    LeaseMixin,
):
    """The lead ledger. Build with ``Ledger.from_url`` (which migrates to the newest schema)."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        # Wall clock for bookkeeping columns (staged_at, created_at...); never in outputs.
        self._now = clock or (lambda: datetime.now(UTC))
        self._joined = threading.local()  # this thread's ``one_transaction``, if open

    @classmethod
    def from_url(
        cls, url: str, *, clock: Callable[[], datetime] | None = None, scratch: bool = False
    ) -> Ledger:
        """Open (creating or upgrading as needed) the ledger at ``url``; ``scratch``: one
        thrown away afterwards (``create_ledger_engine``)."""
        engine = create_ledger_engine(url, scratch=scratch)
        migrations.upgrade(engine)
        return cls(engine, clock=clock)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction (IMMEDIATE on SQLite); commits on success. Inside this
        thread's ``one_transaction`` it is that transaction."""
        joined: BatchWork | None = getattr(self._joined, "batch", None)
        if joined is not None:
            yield joined.conn
            return
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            yield conn

    @property
    def exclusive_writes(self) -> bool:
        """Whether write transactions exclude each other (SQLite: BEGIN IMMEDIATE), so that
        one held across all the steps of a batch cannot deadlock with another writer."""
        return self.dialect == "sqlite"

    @contextmanager
    def one_transaction(self) -> Iterator[sa.Connection]:
        """One write transaction for the whole block: ``write()`` in this thread joins it,
        ``batch_work`` of its connection is one batch-wide ``BatchWork`` (each lead-facts
        and outbox row read once and written once, at the end), and it commits when the
        block ends.
        ``BatchProcessor.process`` runs a batch's steps in it where ``exclusive_writes``."""
        if not self.exclusive_writes:
            raise LedgerError(
                f"one_transaction needs a ledger whose writes exclude each other (SQLite); "
                f"on {self.dialect} each step commits its own transaction"
            )
        with self.write() as conn:
            batch = BatchWork(conn, self._now(), _INSERT_DECISION, batch_wide=True)
            self._joined.batch = batch
            try:
                yield conn
                batch.finish()
            finally:
                self._joined.batch = None

    def batch_work(self, conn: sa.Connection) -> BatchWork:
        """Set-based writes of one batch step in ``conn``'s transaction (``batch.py``); in
        ``one_transaction``, the batch-wide one."""
        joined: BatchWork | None = getattr(self._joined, "batch", None)
        if joined is not None and joined.conn is conn:
            return joined
        return BatchWork(conn, self._now(), _INSERT_DECISION)

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # --- re-sync windows ----------------------------------------------------------------

    def record_resync_window(self, gap: ResyncGap) -> int:
        """Record a span of changes that CDC did not deliver (gap, overflow, expired replay id).

        Idempotent: the same channel, reason and starting point return the existing id.
        """
        if gap.from_replay is None and gap.from_time_ms is None:
            raise LedgerError(
                f"resync window for {gap.channel!r} ({gap.reason}) needs a starting point: "
                "from_replay, from_time_ms or both"
            )
        from_hex = replay_id_hex(gap.from_replay) if gap.from_replay is not None else None
        from_key = f"{from_hex or ''}@{'' if gap.from_time_ms is None else gap.from_time_ms}"
        with self.write() as conn:
            conn.execute(
                insert_ignore(conn, t.resync_windows, ["channel", "reason", "from_key"]).values(
                    channel=gap.channel,
                    reason=gap.reason,
                    from_replay=from_hex,
                    from_time=gap.from_time_ms,
                    to_time=gap.to_time_ms,
                    from_key=from_key,
                    detail=json.loads(dumps(dict(gap.detail))),
                    detected_at=self._now(),
                    status=WINDOW_OPEN,
                )
            )
            return conn.execute(
                sa.select(t.resync_windows.c.id).where(
                    t.resync_windows.c.channel == gap.channel,
                    t.resync_windows.c.reason == gap.reason,
                    t.resync_windows.c.from_key == from_key,
                )
            ).scalar_one()

    def open_resync_windows(self, channel: str | None = None) -> list[ResyncWindow]:
        return self.resync_windows(status=WINDOW_OPEN, channel=channel)

    def resync_windows(
        self, *, status: str | None = None, channel: str | None = None
    ) -> list[ResyncWindow]:
        query = sa.select(t.resync_windows).order_by(t.resync_windows.c.id)
        if status is not None:
            query = query.where(t.resync_windows.c.status == status)
        if channel is not None:
            query = query.where(t.resync_windows.c.channel == channel)
        with self.read() as conn:
            return [_resync_window(row) for row in conn.execute(query).all()]

    def close_resync_window(
        self, window_id: int, *, detail: Mapping[str, Any] | None = None
    ) -> bool:
        """Close a window after its re-sync ran; ``detail`` is merged into the stored detail.

        True if this call closed it, False if it was already closed.
        """
        with self.write() as conn:
            row = required_row(conn, t.resync_windows.c.id, window_id, _UNKNOWN_WINDOW)
            if row.status == WINDOW_CLOSED:
                return False
            merged = {**(row.detail or {}), **dict(detail or {})}
            conn.execute(
                t.resync_windows.update()
                .where(t.resync_windows.c.id == window_id)
                .values(
                    status=WINDOW_CLOSED, closed_at=self._now(), detail=json.loads(dumps(merged))
                )
            )
        return True


def _resync_window(row: sa.Row[Any]) -> ResyncWindow:
    return from_row(
        ResyncWindow,
        row,
        from_replay_hex=row.from_replay,
        from_time_ms=row.from_time,
        to_time_ms=row.to_time,
        detail=dict(row.detail or {}),
    )
