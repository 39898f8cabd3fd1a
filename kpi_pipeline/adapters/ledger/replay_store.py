"""The replay store: per channel, the replay id up to which CDC events are durably staged.

A subscriber resumes after this id (Pub/Sub preset CUSTOM). ``stage_and_advance`` stages a
FetchResponse's events in the inbox and moves the id in one transaction, so no crash can
leave events staged without the id, or the id moved past events that were never staged.

How replay ids are compared: they are opaque bytes. The sandbox's happen to be 8-byte
big-endian integers, Salesforce's have no documented order. The only rule is "the latest
replay id the server sent on a stream comes after the one the stream started from". So
"never move backwards" is enforced per stream session, not by comparing bytes: every
advance names the id it expects to replace (the one the session started from, or its own
previous advance), and the update only applies when the stored id still equals it. A
concurrent process or an operator that moved the id makes the advance fail with
``ReplayPositionMoved`` (nothing is staged), and that stream must restart from the store.
Operators move the id unconditionally (``set_replay_id``, ``reset_replay_id``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import insert_ignore
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.raw import RawEvent

BY_STREAM = "stream"
BY_OPERATOR = "operator"


class ReplayPositionMoved(RuntimeError):
    """The stored replay id is not the one this stream session expected to advance from."""

    def __init__(self, channel: str, expected: bytes | None, found: bytes | None) -> None:
        super().__init__(
            f"the durable replay id of {channel} is {_show(found)}, not {_show(expected)} as "
            "this stream expected: another process or an operator moved it. Nothing was "
            "staged; restart the stream so it resumes from the stored replay id."
        )
        self.channel = channel
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class ReplayPosition:
    channel: str
    replay_id: bytes
    commit_ms: int | None  # commit time of the newest event staged up to replay_id
    updated_at: datetime
    updated_by: str  # "stream" or "operator"


@dataclass(frozen=True, slots=True)
class StagedResponse:
    channel: str
    replay_id: bytes  # the durable replay id afterwards
    batch_id: str | None  # None for a keepalive or when every event was staged before
    staged: int  # events newly written to the inbox


def _show(replay_id: bytes | None) -> str:
    return "none (start from the preset)" if replay_id is None else replay_id_hex(replay_id)


class ReplayStoreMixin:
    """Replay store methods of ``Ledger`` (needs ``write``, ``read``, ``_now``, staging)."""

    write: Callable[..., Any]
    read: Callable[..., Any]
    _now: Callable[[], datetime]

    def replay_id(self, channel: str) -> bytes | None:
        """The durable replay id of ``channel``; None when it starts from a preset."""
        with self.read() as conn:
            value = conn.execute(
                sa.select(t.cdc_replay_ids.c.replay_id).where(t.cdc_replay_ids.c.channel == channel)
            ).scalar_one_or_none()
        return bytes(value) if value is not None else None

    def replay_positions(self) -> list[ReplayPosition]:
        """Every channel's durable position, by channel name."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(t.cdc_replay_ids).order_by(t.cdc_replay_ids.c.channel)
            ).all()
        return [
            ReplayPosition(
                row.channel, bytes(row.replay_id), row.commit_ms, row.updated_at, row.updated_by
            )
            for row in rows
        ]

    def set_replay_id(self, channel: str, replay_id: bytes) -> None:
        """Operator: the channel resumes after ``replay_id`` (may move backwards or forwards)."""
        if not isinstance(replay_id, bytes) or not replay_id:
            raise ValueError(
                f"replay id for {channel} must be non-empty bytes, got {replay_id!r}; "
                "use reset_replay_id to start from the preset"
            )
        with self.write() as conn:
            conn.execute(sa.delete(t.cdc_replay_ids).where(t.cdc_replay_ids.c.channel == channel))
            self._insert_position(conn, channel, replay_id, None, BY_OPERATOR)

    def reset_replay_id(self, channel: str) -> bool:
        """Operator: forget the channel's position (it restarts from the preset).

        True if there was one."""
        with self.write() as conn:
            deleted = conn.execute(
                sa.delete(t.cdc_replay_ids).where(t.cdc_replay_ids.c.channel == channel)
            )
        return deleted.rowcount == 1

    def stage_and_advance(
        self,
        channel: str,
        events: Sequence[RawEvent],
        schemas: Mapping[str, str],
        *,
        replay_id: bytes,
        expected: bytes | None,
        commit_ms: int | None = None,
    ) -> StagedResponse:
        """Stage one FetchResponse and advance the durable replay id, in one transaction.

        ``replay_id`` is the response's latest replay id; ``expected`` the durable id the
        stream session holds before it (see the module doc). A keepalive passes no events
        and only advances. Raises ``ReplayPositionMoved`` (nothing written) on a mismatch.
        """
        if not replay_id:
            raise ValueError(f"stage_and_advance({channel!r}) needs a non-empty replay_id")
        batch_id, staged = None, 0
        with self.write() as conn:
            self._advance(conn, channel, replay_id, expected, commit_ms)
            if events:
                after = replay_id_hex(expected) if expected is not None else ""
                batch = self._stage_in(conn, channel, events, schemas, after_replay=after)  # type: ignore[attr-defined]
                batch_id = batch.batch_id if batch.count else None
                staged = batch.count if batch.newly_staged else 0
        return StagedResponse(channel, replay_id, batch_id, staged)

    def _advance(
        self,
        conn: sa.Connection,
        channel: str,
        replay_id: bytes,
        expected: bytes | None,
        commit_ms: int | None,
    ) -> None:
        table = t.cdc_replay_ids
        if expected is None:
            # First position of a channel: whoever inserts first wins, the other conflicts.
            inserted = conn.execute(
                insert_ignore(conn, table, ["channel"]).values(
                    channel=channel,
                    replay_id=replay_id,
                    commit_ms=commit_ms,
                    updated_at=self._now(),
                    updated_by=BY_STREAM,
                )
            )
            if inserted.rowcount != 1:
                raise ReplayPositionMoved(channel, None, self._stored(conn, channel))
            return
        values: dict[str, Any] = {
            "replay_id": replay_id,
            "updated_at": self._now(),
            "updated_by": BY_STREAM,
        }
        if commit_ms is not None:
            values["commit_ms"] = commit_ms
        # Compare-and-set: only the session that holds the stored id may move it.
        updated = conn.execute(
            table.update()
            .where(table.c.channel == channel, table.c.replay_id == expected)
            .values(**values)
        )
        if updated.rowcount != 1:
            raise ReplayPositionMoved(channel, expected, self._stored(conn, channel))

    def _insert_position(
        self,
        conn: sa.Connection,
        channel: str,
        replay_id: bytes,
        commit_ms: int | None,
        updated_by: str,
    ) -> None:
        conn.execute(
            t.cdc_replay_ids.insert().values(
                channel=channel,
                replay_id=replay_id,
                commit_ms=commit_ms,
                updated_at=self._now(),
                updated_by=updated_by,
            )
        )

    @staticmethod
    def _stored(conn: sa.Connection, channel: str) -> bytes | None:
        value = conn.execute(
            sa.select(t.cdc_replay_ids.c.replay_id).where(t.cdc_replay_ids.c.channel == channel)
        ).scalar_one_or_none()
        return bytes(value) if value is not None else None
