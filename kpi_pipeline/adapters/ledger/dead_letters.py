"""Dead letters in the ledger (mixed into ``Ledger``): events parked at the stage that failed
on them (decode, merge, a lead's workload), once per (channel, replay id, stage), and the
counts ``/status`` and ``/readyz`` report."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import field_params, from_row, insert_ignore
from kpi_pipeline.core.ledger_rows import FailedEvent


@dataclass(frozen=True, slots=True)
class DeadLetter(FailedEvent):
    """A parked event as stored."""

    id: int
    created_at: datetime


class DeadLetterMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def write(self) -> AbstractContextManager[sa.Connection]: ...  # provided by Ledger

    def read(self) -> AbstractContextManager[sa.Connection]: ...  # provided by Ledger

    def dead_letter(self, failed: FailedEvent, *, conn: sa.Connection | None = None) -> bool:
        """Park one event that failed at its stage; True if it was not parked there before.

        ``conn``: write inside the caller's transaction (the caller commits)."""
        stmt = insert_ignore(
            self._conn_or_engine(conn), t.dead_letters, ["channel", "replay_id", "stage"]
        )
        values = {**field_params(failed), "created_at": self._now()}
        if conn is not None:
            return conn.execute(stmt.values(**values)).rowcount == 1
        with self.write() as own:
            return own.execute(stmt.values(**values)).rowcount == 1

    def _conn_or_engine(self, conn: sa.Connection | None) -> Any:
        return conn if conn is not None else self.engine

    def dead_letters(self, limit: int = 100, *, channel: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        query = sa.select(t.dead_letters).order_by(t.dead_letters.c.id.desc()).limit(limit)
        if channel is not None:
            query = query.where(t.dead_letters.c.channel == channel)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [
            from_row(
                DeadLetter,
                row,
                replay_id=bytes(row.replay_id),
                payload=bytes(row.payload) if row.payload is not None else None,
            )
            for row in rows
        ]

    def dead_letter_counts(self, *, since: datetime | None = None) -> dict[str, int]:
        """Dead letters per stage and error type (``"decode: PayloadDecodeError"``), all or
        those recorded at or after ``since``. Reasons are ``"<ErrorType>: <detail>"``."""
        query = sa.select(t.dead_letters.c.stage, t.dead_letters.c.reason)
        if since is not None:
            query = query.where(t.dead_letters.c.created_at >= since)
        counts: dict[str, int] = {}
        with self.read() as conn:
            for stage, reason in conn.execute(query):
                key = _dead_letter_key(stage, reason)
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def dead_letter_summary(self, *, since: datetime) -> tuple[dict[str, int], int]:
        """``dead_letter_counts()`` of all dead letters and how many of them were recorded at or
        after ``since``, in one grouped query (``/status`` and ``/readyz`` ask for both)."""
        dl = t.dead_letters.c
        recent = sa.func.sum(sa.case((dl.created_at >= since, 1), else_=0))
        query = sa.select(dl.stage, dl.reason, sa.func.count(), recent).group_by(
            dl.stage, dl.reason
        )
        counts: dict[str, int] = {}
        total_recent = 0
        with self.read() as conn:
            for stage, reason, count, recent_count in conn.execute(query):
                key = _dead_letter_key(stage, reason)
                counts[key] = counts.get(key, 0) + count
                total_recent += int(recent_count or 0)
        return dict(sorted(counts.items())), total_recent


def _dead_letter_key(stage: str, reason: str) -> str:
    """``"<stage>: <ErrorType>"`` from a reason ``"<ErrorType>: <detail>"``."""
    return f"{stage}: {reason.split(':', 1)[0].strip() or 'unknown'}"
