"""The contract between the sandbox's state store and the servers that expose it.

The Pub/Sub API server (``pubsub_server.py``) reads change events through
``ChangeLogSource``; the REST server (``rest_server.py``) reads and writes records through
``RecordStore``. ``store.SandboxStore`` (SQLite file) implements both;
``InMemoryChangeLog`` is a small in-memory ``ChangeLogSource`` for protocol tests.

Replay ids in the sandbox are one global, strictly increasing integer sequence (gaps
allowed), delivered on the wire as 8-byte big-endian bytes, like the real bus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Channel -> entity names it carries. Custom channels (``/data/<Name>__chn``) carry the
# pipeline's entities; the standard ``/data/ChangeEvents`` carries every object with change
# events, as on a real org: Contact and Account too (each has two compound fields of one
# type, the second a reference to the named Address type).
SANDBOX_ENTITIES = ("Lead", "Task", "EmailMessage")
# Contact also has a custom channel of its own.
CONTACT_CHANNEL = "/data/Contacts__chn"
EXTRA_ENTITIES = ("Contact", "Account")
ALL_ENTITIES = SANDBOX_ENTITIES + EXTRA_ENTITIES


def entities_for_channel(channel: str) -> tuple[str, ...] | None:
    """Entities a channel carries, or None when the sandbox has no such topic."""
    if channel == CONTACT_CHANNEL:
        return ("Contact",)
    if channel == "/data/ChangeEvents":
        return ALL_ENTITIES
    if channel.startswith("/data/") and channel.endswith("__chn"):
        return SANDBOX_ENTITIES
    if channel.startswith("/data/") and channel.endswith("ChangeEvent"):
        entity = channel[len("/data/") : -len("ChangeEvent")]
        if entity.endswith("__"):
            entity = entity + "c"
        return (entity,) if entity in ALL_ENTITIES else None
    return None


@dataclass(frozen=True, slots=True)
class StoredChange:
    """One change event as the store keeps it, before Avro encoding.

    ``header`` uses the recorded-JSON keys of CONTRACTS.md §2 with field lists as *names*
    (``changedFields``: ["Status", "LastModifiedDate"]); the Pub/Sub server turns them
    into bitmaps against the entity's schema. ``fields`` holds the body values (DateTimes as
    epoch milliseconds, as Avro carries them); absent keys are null on the wire.
    """

    replay: int
    entity: str
    header: Mapping[str, Any]
    fields: Mapping[str, Any]
    commit_timestamp: int  # epoch ms, equals header["commitTimestamp"]


class ChangeLogSource(Protocol):
    """A source may also have ``schemas`` (``kpi_pipeline.sandbox.encoding.SchemaSet``, the
    org's schemas with its custom fields); without it the default set is served."""

    def read_changes(
        self, entities: Sequence[str], after_replay: int | None, limit: int
    ) -> list[StoredChange]:
        """Changes of those entities with replay > after_replay (None: from the oldest retained), oldest first."""

    def latest_replay(self) -> int:
        """Highest replay id issued so far (0 when empty)."""

    def earliest_retained_replay(self, now_ms: int) -> int | None:
        """Lowest replay id still inside the retention window at now_ms (None when empty)."""

    def wait_for_changes(self, after_replay: int, timeout: float) -> bool:
        """Block until a change with replay > after_replay exists or timeout passes."""


class RecordStore(Protocol):
    def get_record(
        self, sobject: str, record_id: str, *, include_deleted: bool = False
    ) -> dict[str, Any] | None: ...

    def create_record(
        self, sobject: str, values: Mapping[str, Any], *, user_id: str, change_origin: str = ""
    ) -> str:
        """Insert a record, append its CREATE change event; returns the new id."""

    def update_record(
        self,
        sobject: str,
        record_id: str,
        values: Mapping[str, Any],
        *,
        user_id: str,
        change_origin: str = "",
    ) -> None:
        """Apply values and append the matching UPDATE change event."""

    def delete_record(
        self, sobject: str, record_id: str, *, user_id: str, change_origin: str = ""
    ) -> None:
        """Move the record to the recycle bin and append the DELETE change event."""

    def query_records(
        self,
        sobject: str,
        *,
        ids: Sequence[str] | None = None,
        modified_since_ms: int | None = None,
    ) -> list[dict[str, Any]]: ...

    def field_history(
        self, sobject: str, record_ids: Sequence[str], *, field: str | None = None
    ) -> list[dict[str, Any]]:
        """``<sobject>History`` rows of those records, oldest first (``SandboxStore``)."""


@dataclass
class InMemoryChangeLog:
    """A ChangeLogSource over a list, for protocol tests and benchmarks."""

    retention_ms: int = 72 * 3600 * 1000
    changes: list[StoredChange] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def append(
        self,
        entity: str,
        header: Mapping[str, Any],
        fields: Mapping[str, Any],
        *,
        replay_step: int = 1,
    ) -> StoredChange:
        with self._cond:
            replay = (self.changes[-1].replay if self.changes else 0) + replay_step
            change = StoredChange(
                replay, entity, dict(header), dict(fields), int(header.get("commitTimestamp") or 0)
            )
            self.changes.append(change)
            self._cond.notify_all()
            return change

    def read_changes(
        self, entities: Sequence[str], after_replay: int | None, limit: int
    ) -> list[StoredChange]:
        with self._cond:
            floor = self.earliest_retained_replay(int(time.time() * 1000))
            out = []
            for change in self.changes:
                if after_replay is not None and change.replay <= after_replay:
                    continue
                if floor is not None and change.replay < floor:
                    continue
                if change.entity in entities:
                    out.append(change)
                    if len(out) >= limit:
                        break
            return out

    def latest_replay(self) -> int:
        with self._cond:
            return self.changes[-1].replay if self.changes else 0

    def earliest_retained_replay(self, now_ms: int) -> int | None:
        with self._cond:
            for change in self.changes:
                if change.commit_timestamp >= now_ms - self.retention_ms:
                    return change.replay
            return None

    def wait_for_changes(self, after_replay: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.latest_replay() > after_replay, timeout=timeout)
