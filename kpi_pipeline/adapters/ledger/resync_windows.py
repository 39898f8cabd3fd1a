"""The re-sync's view of the ledger (``kpi_pipeline.app.resync.ports.ResyncLedger``).

A thin wrapper of ``Ledger``: open windows (``kpi_pipeline.core.resync_windows`` values), closing one, updating an open window's detail in one transaction (the re-sync
records a failed attempt there), the record states a re-read is compared with, and the
staged GetSchema answers it learns the org's fields from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.resync_windows import WINDOW_OPEN, ResyncWindow
from kpi_pipeline.core.workloads.records import RecordState


class LedgerResyncWindows:
    """The re-sync's ledger port over a ``Ledger``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def open_resync_windows(self, channel: str | None = None) -> list[ResyncWindow]:
        return self.ledger.open_resync_windows(channel)

    def close_resync_window(
        self, window_id: int, *, detail: Mapping[str, Any] | None = None
    ) -> bool:
        return self.ledger.close_resync_window(window_id, detail=detail)

    def update_open_resync_window(
        self, window_id: int, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> bool:
        """Replace an open window's detail by ``change(detail)``, reading and writing in one
        write transaction so a concurrent close is not overwritten; False (``change`` not
        called) when the window is closed or unknown."""
        table = t.resync_windows
        with self.ledger.write() as conn:
            row = conn.execute(
                sa.select(table.c.status, table.c.detail).where(table.c.id == window_id)
            ).one_or_none()
            if row is None or row.status != WINDOW_OPEN:
                return False
            detail = change(dict(row.detail or {}))
            conn.execute(
                table.update()
                .where(table.c.id == window_id)
                .values(detail=json.loads(dumps(detail)))
            )
        return True

    def record_states(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordState]:
        with self.ledger.read() as conn:
            return self.ledger.records(conn, keys)

    def staged_schemas(self, channel: str | None = None) -> list[tuple[str, str]]:
        return self.ledger.staged_schemas(channel)
