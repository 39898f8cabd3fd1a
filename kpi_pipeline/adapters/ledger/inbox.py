"""CDC staging in the ledger (mixed into ``Ledger``): the inbox of fetched events, staged as
batches with the schemas to decode them, loaded back for processing and marked done.

Every write is idempotent (delivery is at-least-once, CONTRACTS.md §1): a batch's id is
derived from its replay range (``batch_id_for``) and events are inserted with ``ON
CONFLICT DO NOTHING``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.engine import LedgerError
from kpi_pipeline.adapters.ledger.sql import from_row, insert_ignore, required_row, text_insert
from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.ledger_rows import LoadedBatch
from kpi_pipeline.core.raw import RawEvent

BATCH_STAGED = "staged"
BATCH_DONE = "done"
_UNKNOWN_BATCH = (
    "batch {!r} is not in the ledger; stage it first (stage_batch) or list staged batches "
    "with pending_batches()"
)


@dataclass(frozen=True, slots=True)
class StagedBatch:
    batch_id: str
    channel: str
    first_replay_hex: str
    last_replay_hex: str
    count: int
    newly_staged: bool


@dataclass(frozen=True, slots=True)
class BatchInfo:
    batch_id: str
    channel: str
    first_replay_hex: str
    last_replay_hex: str
    event_count: int
    status: str
    staged_at: datetime
    completed_at: datetime | None
    run_id: str | None
    summary: dict[str, Any] | None
    after_replay: str = ""


def batch_id_for(channel: str, first_replay: bytes, last_replay: bytes) -> str:
    """Deterministic batch id: the same delivered range always gets the same id."""
    return f"{channel}:{replay_id_hex(first_replay)}-{replay_id_hex(last_replay)}"


class InboxMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def write(self) -> AbstractContextManager[sa.Connection]: ...  # provided by Ledger

    def read(self) -> AbstractContextManager[sa.Connection]: ...  # provided by Ledger

    def stage_batch(
        self,
        channel: str,
        events: Sequence[RawEvent],
        schemas: Mapping[str, str],
        *,
        after_replay: str = "",
    ) -> StagedBatch:
        """Durably stage fetched events as one batch, in one transaction.

        Idempotent: staging the same events again returns the same batch with
        ``newly_staged=False`` and writes nothing. Events already staged by an earlier,
        overlapping batch stay in that batch; when none of ``events`` is new, nothing is
        written and ``count`` is 0. ``after_replay`` is the hex replay id the fetch started
        after ('' for a preset), so an interrupted tick can find the batch again
        (``find_batch_after``).
        """
        with self.write() as conn:
            return self._stage_in(conn, channel, events, schemas, after_replay=after_replay)

    def _stage_in(
        self,
        conn: sa.Connection,
        channel: str,
        events: Sequence[RawEvent],
        schemas: Mapping[str, str],
        *,
        after_replay: str,
    ) -> StagedBatch:
        """``stage_batch`` inside the caller's transaction (the replay store advances in it)."""
        self._check_stage_input(channel, events)
        batch_id = batch_id_for(channel, events[0].replay_id, events[-1].replay_id)
        first_hex, last_hex = (
            replay_id_hex(events[0].replay_id),
            replay_id_hex(events[-1].replay_id),
        )
        now = self._now()
        existing = conn.execute(
            sa.select(t.cdc_batches.c.event_count).where(t.cdc_batches.c.batch_id == batch_id)
        ).scalar_one_or_none()
        if existing is not None:
            return StagedBatch(batch_id, channel, first_hex, last_hex, existing, False)
        self._store_schemas(conn, events, schemas)
        # An event staged by an earlier, overlapping batch stays there (DO NOTHING), which
        # leaves a gap in this batch's positions; they still give the delivery order.
        staged = bulk.insert_new(
            conn,
            _STAGE_EVENT,
            [
                {
                    "channel": channel,
                    "replay_id": event.replay_id,
                    "batch_id": batch_id,
                    "position": position,
                    "schema_id": event.schema_id,
                    "payload": event.payload,
                    "event_id": event.event_id,
                    "staged_at": now,
                }
                for position, event in enumerate(events)
            ],
        )
        if not staged:
            return StagedBatch(batch_id, channel, first_hex, last_hex, 0, False)
        conn.execute(
            t.cdc_batches.insert().values(
                batch_id=batch_id,
                channel=channel,
                first_replay_hex=first_hex,
                last_replay_hex=last_hex,
                event_count=staged,
                status=BATCH_STAGED,
                staged_at=now,
                after_replay=after_replay,
            )
        )
        return StagedBatch(batch_id, channel, first_hex, last_hex, staged, True)

    @staticmethod
    def _check_stage_input(channel: str, events: Sequence[RawEvent]) -> None:
        if not events:
            raise LedgerError(
                f"stage_batch({channel!r}) got no events; stage only non-empty fetches"
            )
        wrong = sorted({e.channel for e in events if e.channel != channel})
        if wrong:
            raise LedgerError(
                f"stage_batch({channel!r}) got events of other channels {wrong}; stage one channel per batch"
            )
        seen: set[bytes] = set()
        for event in events:
            if event.replay_id in seen:
                raise LedgerError(
                    f"stage_batch({channel!r}) got replay id {replay_id_hex(event.replay_id)} twice; "
                    "de-duplicate the fetched events first"
                )
            seen.add(event.replay_id)

    def _store_schemas(
        self, conn: sa.Connection, events: Sequence[RawEvent], schemas: Mapping[str, str]
    ) -> None:
        needed = {e.schema_id for e in events}
        if schemas:
            conn.execute(
                insert_ignore(conn, t.cdc_schemas, ["schema_id"]),
                [{"schema_id": k, "schema_json": v} for k, v in sorted(schemas.items())],
            )
        missing = needed - set(schemas)
        if missing:
            known = set(
                conn.execute(
                    sa.select(t.cdc_schemas.c.schema_id).where(
                        t.cdc_schemas.c.schema_id.in_(missing)
                    )
                ).scalars()
            )
            if missing - known:
                raise LedgerError(
                    f"no schema JSON for schema ids {sorted(missing - known)}; pass them in "
                    "`schemas` (GetSchema) so the batch can be decoded later"
                )

    def find_batch_after(self, channel: str, after_replay: str) -> StagedBatch | None:
        """The newest batch of ``channel`` whose fetch started after ``after_replay`` (hex, '' =
        a preset), so a tick that staged but could not save its cursor re-emits that batch."""
        query = (
            sa.select(t.cdc_batches)
            .where(t.cdc_batches.c.channel == channel, t.cdc_batches.c.after_replay == after_replay)
            .order_by(t.cdc_batches.c.staged_at.desc(), t.cdc_batches.c.batch_id.desc())
            .limit(1)
        )
        with self.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            return None
        return StagedBatch(
            row.batch_id,
            row.channel,
            row.first_replay_hex,
            row.last_replay_hex,
            row.event_count,
            False,
        )

    def batch(self, batch_id: str) -> BatchInfo | None:
        with self.read() as conn:
            row = conn.execute(
                sa.select(t.cdc_batches).where(t.cdc_batches.c.batch_id == batch_id)
            ).one_or_none()
        return from_row(BatchInfo, row) if row else None

    def pending_batches(self, channel: str | None = None) -> list[BatchInfo]:
        """Batches staged but not yet done, oldest first."""
        query = sa.select(t.cdc_batches).where(t.cdc_batches.c.status == BATCH_STAGED)
        if channel is not None:
            query = query.where(t.cdc_batches.c.channel == channel)
        with self.read() as conn:
            rows = conn.execute(
                query.order_by(t.cdc_batches.c.staged_at, t.cdc_batches.c.batch_id)
            ).all()
        return [from_row(BatchInfo, row) for row in rows]

    def load_batch(self, batch_id: str) -> LoadedBatch:
        """The staged events of a batch in delivery order, with the schemas to decode them."""
        with self.read() as conn:
            info = required_row(conn, t.cdc_batches.c.batch_id, batch_id, _UNKNOWN_BATCH)
            rows = conn.execute(
                sa.select(t.cdc_inbox)
                .where(t.cdc_inbox.c.batch_id == batch_id)
                .order_by(t.cdc_inbox.c.position)
            ).all()
            schema_ids = sorted({row.schema_id for row in rows})
            schemas = dict(
                conn.execute(
                    sa.select(t.cdc_schemas.c.schema_id, t.cdc_schemas.c.schema_json).where(
                        t.cdc_schemas.c.schema_id.in_(schema_ids)
                    )
                ).all()
            )
        events = [
            RawEvent(
                channel=row.channel,
                replay_id=bytes(row.replay_id),
                schema_id=row.schema_id,
                payload=bytes(row.payload),
                event_id=row.event_id,
            )
            for row in rows
        ]
        return LoadedBatch(batch_id, info.channel, events, schemas, info.status)

    def staged_schemas(self, channel: str | None = None) -> list[tuple[str, str]]:
        """(schema id, schema JSON) of the schemas staged events were written with, on
        ``channel`` (None: any), most recently staged first: the org's own GetSchema
        answers, as the re-sync reads them to learn the org's fields and channels."""
        inbox = t.cdc_inbox
        newest = sa.func.max(inbox.c.staged_at).label("newest")
        query = sa.select(inbox.c.schema_id, newest).group_by(inbox.c.schema_id)
        if channel is not None:
            query = query.where(inbox.c.channel == channel)
        with self.read() as conn:
            used = conn.execute(query).all()
            ids = [r.schema_id for r in sorted(used, key=lambda r: (r.newest, r.schema_id))]
            ids.reverse()
            texts = dict(
                conn.execute(
                    sa.select(t.cdc_schemas.c.schema_id, t.cdc_schemas.c.schema_json).where(
                        t.cdc_schemas.c.schema_id.in_(ids)
                    )
                ).all()
            )
        return [(schema_id, texts[schema_id]) for schema_id in ids if schema_id in texts]

    def mark_batch_done(self, batch_id: str, *, run_id: str, summary: Mapping[str, Any]) -> bool:
        """Mark a batch processed. The first completion wins (a retried run returns False)."""
        with self.write() as conn:
            result = conn.execute(
                t.cdc_batches.update()
                .where(t.cdc_batches.c.batch_id == batch_id, t.cdc_batches.c.status == BATCH_STAGED)
                .values(
                    status=BATCH_DONE,
                    completed_at=self._now(),
                    run_id=run_id,
                    summary=json.loads(dumps(summary)),
                )
            )
            if (
                result.rowcount == 0
                and not conn.execute(
                    sa.select(sa.literal(1)).where(t.cdc_batches.c.batch_id == batch_id)
                ).first()
            ):
                raise LedgerError(f"cannot mark batch {batch_id!r} done: it was never staged")
        return result.rowcount == 1


# Each FetchResponse's events, staged once: an event staged by an earlier, overlapping
# batch stays in it. Typed text, compiled once (``sql.text_insert``), written and counted by
# ``bulk.insert_new``.
_STAGE_EVENT = text_insert(
    t.cdc_inbox,
    [
        "channel",
        "replay_id",
        "batch_id",
        "position",
        "schema_id",
        "payload",
        "event_id",
        "staged_at",
    ],
    ["channel", "replay_id"],
)
