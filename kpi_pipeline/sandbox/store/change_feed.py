"""The store's change log as the Pub/Sub server and the recorder read it.

``ChangeFeed`` is the ``ChangeLogSource`` side of the store: changes in replay order within
the retention window, the bus position, waiting for new changes (at once for writes in this
process, by polling every 50 ms for other processes), pruning, and the export to recorded
JSON Lines (CONTRACTS.md §2)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.store.database import StoreDatabase
from kpi_pipeline.sandbox.store.fields import DATETIME_FIELDS


class ChangeFeed(StoreDatabase):
    """Reading, pruning and exporting the change log (see the module docstring)."""

    def read_changes(
        self, entities: Sequence[str], after_replay: int | None, limit: int
    ) -> list[StoredChange]:
        """Changes of those entities with replay > after_replay that are still retained, oldest first."""
        if not entities or limit <= 0:
            return []
        floor = self.earliest_retained_replay(self.clock())
        if floor is None:
            return []
        start = max(floor, (after_replay or 0) + 1)
        marks = ",".join("?" * len(entities))
        rows = (
            self._conn()
            .execute(
                f"SELECT replay, entity, header, fields, commit_ts FROM changes "
                f"WHERE replay >= ? AND entity IN ({marks}) ORDER BY replay LIMIT ?",
                (start, *entities, int(limit)),
            )
            .fetchall()
        )
        return [StoredChange(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    def latest_replay(self) -> int:
        row = (
            self._conn()
            .execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
            .fetchone()
        )
        return int(row[0]) if row else 0

    def earliest_retained_replay(self, now_ms: int) -> int | None:
        row = (
            self._conn()
            .execute(
                "SELECT MIN(replay) FROM changes WHERE commit_ts >= ?",
                (int(now_ms) - self.retention_ms,),
            )
            .fetchone()
        )
        return None if row[0] is None else int(row[0])

    def wait_for_changes(self, after_replay: int, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.latest_replay() > after_replay:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    # -- maintenance and export ------------------------------------------------------------
    def prune(self, now_ms: int | None = None) -> int:
        """Delete change events older than the retention window; returns how many."""
        cutoff = self._now(now_ms) - self.retention_ms
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.execute("DELETE FROM changes WHERE commit_ts < ?", (cutoff,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(count)

    def iter_changes(self, after_replay: int = 0, *, batch: int = 1000) -> Iterator[StoredChange]:
        """Every stored change (retained or not) in replay order."""
        last = after_replay
        while True:
            rows = (
                self._conn()
                .execute(
                    "SELECT replay, entity, header, fields, commit_ts FROM changes WHERE replay > ? ORDER BY replay LIMIT ?",
                    (last, batch),
                )
                .fetchall()
            )
            if not rows:
                return
            for r in rows:
                yield StoredChange(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4])
            last = rows[-1][0]

    def export_recorded(
        self,
        path: str | Path,
        *,
        channel_for_entity: Callable[[str], str] | str | None = None,
        iso_datetimes: bool = False,
        after_replay: int = 0,
    ) -> int:
        """Write the change log as recorded JSON Lines (CONTRACTS.md §2); returns the line count.

        ``channel_for_entity``: a function entity -> channel, one channel for all (e.g.
        ``/data/SalesKpis__chn``), or None for ``/data/<Entity>ChangeEvent``."""
        if channel_for_entity is None:
            channel_of: Callable[[str], str] = lambda entity: f"/data/{entity}ChangeEvent"  # noqa: E731
        elif isinstance(channel_for_entity, str):
            channel_of = lambda entity: channel_for_entity  # noqa: E731
        else:
            channel_of = channel_for_entity
        out_path = Path(path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        tmp = out_path.with_name(out_path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for change in self.iter_changes(after_replay):
                handle.write(
                    json.dumps(
                        recorded_message(
                            change,
                            channel_of(change.entity),
                            iso_datetimes=iso_datetimes,
                            schemas=self.schemas,
                        )
                    )
                )
                handle.write("\n")
                count += 1
        tmp.replace(out_path)
        return count


def recorded_message(
    change: StoredChange,
    channel: str,
    *,
    iso_datetimes: bool = False,
    schemas: SchemaSet = DEFAULT_SCHEMAS,
) -> dict[str, Any]:
    """One stored change in the recorded-JSON shape of CONTRACTS.md §2."""
    payload: dict[str, Any] = {"ChangeEventHeader": dict(change.header)}
    for name, value in change.fields.items():
        if iso_datetimes and name in DATETIME_FIELDS and isinstance(value, int):
            value = format_sf_datetime(parse_sf_datetime(value))
        payload[name] = value
    return {
        "channel": channel,
        "data": {
            "schema": schemas.ids.get(change.entity, ""),
            "event": {"replayId": change.replay},
            "payload": payload,
        },
    }
