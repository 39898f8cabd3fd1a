"""The lead ledger: CDC staging (inbox), replay store, dead letters, re-sync windows, state.

One class, ``Ledger``, over SQLAlchemy Core. SQLite (a file, WAL, busy timeout) by
default, PostgreSQL in production, same code. Every write is idempotent because
delivery is at-least-once end to end (CONTRACTS.md §1): rows are keyed by what they are
about and inserted with ``ON CONFLICT DO NOTHING``.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that two processes
(the sensor and a run) queue on the busy timeout instead of failing with "database is
locked" when a read lock would have to be upgraded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from kpi_pipeline.adapters.ledger import migrations
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.leases import LeaseMixin
from kpi_pipeline.adapters.ledger.outbox import OutboxMixin
from kpi_pipeline.adapters.ledger.replay_store import ReplayStoreMixin
from kpi_pipeline.adapters.ledger.sends import SendsMixin
from kpi_pipeline.adapters.ledger.sql import insert_ignore
from kpi_pipeline.adapters.ledger.state import WorkloadStateMixin
from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.ledger_rows import LoadedBatch
from kpi_pipeline.core.raw import RawEvent

SQLITE_BUSY_TIMEOUT_MS = 30_000
BATCH_STAGED = "staged"
BATCH_DONE = "done"
WINDOW_OPEN = "open"
WINDOW_CLOSED = "closed"


class LedgerError(ValueError):
    """Bad input to the ledger (the message names the input and the fix)."""


# --- value types ------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    channel: str
    replay_id: bytes
    batch_id: str | None
    stage: str
    reason: str
    payload: bytes | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResyncWindow:
    id: int
    channel: str
    reason: str
    from_replay_hex: str | None
    from_time_ms: int | None
    to_time_ms: int | None
    detail: dict[str, Any]
    detected_at: datetime
    status: str
    closed_at: datetime | None


def batch_id_for(channel: str, first_replay: bytes, last_replay: bytes) -> str:
    """Deterministic batch id: the same delivered range always gets the same id."""
    return f"{channel}:{replay_id_hex(first_replay)}-{replay_id_hex(last_replay)}"


# --- engine -----------------------------------------------------------------------------


def create_ledger_engine(url: str) -> sa.Engine:
    """An engine configured for the ledger: WAL + busy timeout + IMMEDIATE writes on SQLite."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True, **JSON_CODEC)
    raise LedgerError(
        f"ledger URL {parsed.render_as_string(hide_password=True)!r} uses an unsupported database; "
        "use sqlite:///path/to/ledger.db or postgresql+psycopg2://user@host/db"
    )


def _json_dumps(value: Any) -> str:
    # NaN and infinities become null (PostgreSQL's json refuses the stdlib's NaN anyway).
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (record states, decisions, outbox fields) through orjson: the replay profile
# after set-based writes spent about 15 % of its time in the stdlib json module, which
# orjson encodes about 3x and decodes about 1.4x faster (bench/RESULTS.md, Replay).
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _sqlite_engine(url: sa.URL) -> sa.Engine:
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
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# --- the ledger -------------------------------------------------------------------------


class Ledger(WorkloadStateMixin, OutboxMixin, SendsMixin, ReplayStoreMixin, LeaseMixin):
    """The lead ledger. Build with ``Ledger.from_url`` (which migrates to the newest schema)."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        # Wall clock for bookkeeping columns (staged_at, created_at...); never in outputs.
        self._now = clock or (lambda: datetime.now(UTC))

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> Ledger:
        """Open (creating or upgrading as needed) the ledger at ``url``."""
        engine = create_ledger_engine(url)
        migrations.upgrade(engine)
        return cls(engine, clock=clock)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction (IMMEDIATE on SQLite); commits on success."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # --- CDC staging --------------------------------------------------------------------

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
        new_events = self._unstaged(conn, channel, events)
        if not new_events:
            return StagedBatch(batch_id, channel, first_hex, last_hex, 0, False)
        conn.execute(
            insert_ignore(conn, t.cdc_inbox, ["channel", "replay_id"]),
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
                for position, event in enumerate(new_events)
            ],
        )
        conn.execute(
            t.cdc_batches.insert().values(
                batch_id=batch_id,
                channel=channel,
                first_replay_hex=first_hex,
                last_replay_hex=last_hex,
                event_count=len(new_events),
                status=BATCH_STAGED,
                staged_at=now,
                after_replay=after_replay,
            )
        )
        return StagedBatch(batch_id, channel, first_hex, last_hex, len(new_events), True)

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

    @staticmethod
    def _unstaged(conn: sa.Connection, channel: str, events: Sequence[RawEvent]) -> list[RawEvent]:
        staged = set(
            conn.execute(
                sa.select(t.cdc_inbox.c.replay_id).where(
                    t.cdc_inbox.c.channel == channel,
                    t.cdc_inbox.c.replay_id.in_([e.replay_id for e in events]),
                )
            ).scalars()
        )
        return [e for e in events if e.replay_id not in staged]

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
        return _batch_info(row) if row else None

    def pending_batches(self, channel: str | None = None) -> list[BatchInfo]:
        """Batches staged but not yet done, oldest first."""
        query = sa.select(t.cdc_batches).where(t.cdc_batches.c.status == BATCH_STAGED)
        if channel is not None:
            query = query.where(t.cdc_batches.c.channel == channel)
        with self.read() as conn:
            rows = conn.execute(
                query.order_by(t.cdc_batches.c.staged_at, t.cdc_batches.c.batch_id)
            ).all()
        return [_batch_info(row) for row in rows]

    def load_batch(self, batch_id: str) -> LoadedBatch:
        """The staged events of a batch in delivery order, with the schemas to decode them."""
        with self.read() as conn:
            info = conn.execute(
                sa.select(t.cdc_batches.c.channel, t.cdc_batches.c.status).where(
                    t.cdc_batches.c.batch_id == batch_id
                )
            ).one_or_none()
            if info is None:
                raise LedgerError(
                    f"batch {batch_id!r} is not in the ledger; stage it first (stage_batch) or "
                    "list staged batches with pending_batches()"
                )
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

    # --- dead letters -------------------------------------------------------------------

    def dead_letter(
        self,
        *,
        channel: str,
        replay_id: bytes,
        batch_id: str | None,
        stage: str,
        reason: str,
        payload: bytes | None,
        conn: sa.Connection | None = None,
    ) -> bool:
        """Park one event that failed at ``stage``; True if it was not parked there before.

        ``conn``: write inside the caller's transaction (the caller commits)."""
        stmt = insert_ignore(
            self._conn_or_engine(conn), t.dead_letters, ["channel", "replay_id", "stage"]
        )
        values = {
            "channel": channel,
            "replay_id": replay_id,
            "batch_id": batch_id,
            "stage": stage,
            "reason": reason,
            "payload": payload,
            "created_at": self._now(),
        }
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
            DeadLetter(
                id=row.id,
                channel=row.channel,
                replay_id=bytes(row.replay_id),
                batch_id=row.batch_id,
                stage=row.stage,
                reason=row.reason,
                payload=bytes(row.payload) if row.payload is not None else None,
                created_at=row.created_at,
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

    # --- re-sync windows ----------------------------------------------------------------

    def record_resync_window(
        self,
        *,
        channel: str,
        reason: str,
        from_replay: bytes | None,
        from_time_ms: int | None,
        to_time_ms: int | None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a span of changes that CDC did not deliver (gap, overflow, expired replay id).

        Idempotent: the same channel, reason and starting point return the existing id.
        """
        if from_replay is None and from_time_ms is None:
            raise LedgerError(
                f"resync window for {channel!r} ({reason}) needs a starting point: "
                "from_replay, from_time_ms or both"
            )
        from_hex = replay_id_hex(from_replay) if from_replay is not None else None
        from_key = f"{from_hex or ''}@{'' if from_time_ms is None else from_time_ms}"
        with self.write() as conn:
            conn.execute(
                insert_ignore(conn, t.resync_windows, ["channel", "reason", "from_key"]).values(
                    channel=channel,
                    reason=reason,
                    from_replay=from_hex,
                    from_time=from_time_ms,
                    to_time=to_time_ms,
                    from_key=from_key,
                    detail=json.loads(dumps(dict(detail or {}))),
                    detected_at=self._now(),
                    status=WINDOW_OPEN,
                )
            )
            return conn.execute(
                sa.select(t.resync_windows.c.id).where(
                    t.resync_windows.c.channel == channel,
                    t.resync_windows.c.reason == reason,
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
            row = conn.execute(
                sa.select(t.resync_windows.c.status, t.resync_windows.c.detail).where(
                    t.resync_windows.c.id == window_id
                )
            ).one_or_none()
            if row is None:
                raise LedgerError(
                    f"no resync window with id {window_id}; list them with `kpi-pipeline ledger resync-windows`"
                )
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


def _batch_info(row: sa.Row[Any]) -> BatchInfo:
    return BatchInfo(
        batch_id=row.batch_id,
        channel=row.channel,
        first_replay_hex=row.first_replay_hex,
        last_replay_hex=row.last_replay_hex,
        event_count=row.event_count,
        status=row.status,
        staged_at=row.staged_at,
        completed_at=row.completed_at,
        run_id=row.run_id,
        summary=row.summary,
        after_replay=row.after_replay,
    )


def _resync_window(row: sa.Row[Any]) -> ResyncWindow:
    return ResyncWindow(
        id=row.id,
        channel=row.channel,
        reason=row.reason,
        from_replay_hex=row.from_replay,
        from_time_ms=row.from_time,
        to_time_ms=row.to_time,
        detail=dict(row.detail or {}),
        detected_at=row.detected_at,
        status=row.status,
        closed_at=row.closed_at,
    )


def _dead_letter_key(stage: str, reason: str) -> str:
    """``"<stage>: <ErrorType>"`` from a reason ``"<ErrorType>: <detail>"``."""
    return f"{stage}: {reason.split(':', 1)[0].strip() or 'unknown'}"
