"""Current state of one Salesforce record, folded from its change events (pure).

CDC delivery is at-least-once and, across channels and replays, not in commit order. A
``RecordState`` is therefore built by *per-field last-writer-wins*: every field remembers
the version ``(commitTimestamp, commitNumber, sequenceNumber)`` of the event that set it,
and an event only overwrites fields whose stored version is older. Applying any
permutation of a record's events, with any duplicates, gives the same state.

Besides Salesforce fields the state keeps a little bookkeeping in ``meta`` (never written
back to Salesforce), each entry merged with an order-independent rule:

* ``created_by``: the ``commitUser`` of the CREATE event (the record's creator when the
  payload has no ``CreatedById``);
* ``commit_user``: ``[version, user]`` of the newest event seen (the last writer);
* ``owner_first_seen``: ``{OwnerId: earliest commit ms at which it was set}``, so the
  time a lead first got a user owner survives later owner changes;
* ``owner_set``: ``[version, commitUser, origin client]`` of the newest event that set
  ``OwnerId``, so routing can tell a person's reassignment from its own write's echo;
* ``first_completed_ms``: for a Task, the earliest completion any of its events reported
  (``task_completion_ms``), so a Task reopened later still counts as the response it was,
  however its events were cut into batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kpi_pipeline.core.events import ChangeEvent, EventFormatError, parse_sf_datetime, to_epoch_ms

Version = tuple[int, int, int]
DELETED_KEY = "_deleted"  # key in ``versions`` for the DELETE/UNDELETE state
_NO_VERSION: Version = (-1, -1, -1)
_FIELD_SETTING_TYPES = frozenset({"CREATE", "UPDATE", "SNAPSHOT", "UNDELETE"})


@dataclass(frozen=True, slots=True)
class RecordState:
    sobject: str
    record_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Version] = field(default_factory=dict)
    created_ms: int | None = None
    deleted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def created_by(self) -> str | None:
        return self.meta.get("created_by")

    @property
    def last_commit_user(self) -> str | None:
        entry = self.meta.get("commit_user")
        return entry[1] if entry else None

    def version_of(self, name: str) -> Version | None:
        return self.versions.get(name)

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-able data. Versions stay tuples, which every JSON encoder writes
        as arrays: converting each to a list cost 7 % of a replay (bench/RESULTS.md)."""
        return {
            "sobject": self.sobject,
            "record_id": self.record_id,
            "fields": self.fields,
            "versions": self.versions,
            "created_ms": self.created_ms,
            "deleted": self.deleted,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> RecordState:
        raw = json.loads(data) if isinstance(data, str) else data
        try:
            meta = dict(raw.get("meta") or {})
            if meta.get("commit_user"):
                version, user = meta["commit_user"]
                meta["commit_user"] = [tuple(version), user]
            return cls(
                sobject=raw["sobject"],
                record_id=raw["record_id"],
                fields=dict(raw.get("fields") or {}),
                versions=_versions(raw.get("versions") or {}),
                created_ms=raw.get("created_ms"),
                deleted=bool(raw.get("deleted", False)),
                meta=meta,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"stored RecordState {str(raw)[:120]!r} is malformed ({exc}); "
                "it must come from RecordState.to_json()"
            ) from exc


def _versions(stored: Mapping[str, Any]) -> dict[str, Version]:
    """Stored versions (JSON arrays of three integers, as ``to_json`` wrote them) as tuples,
    converted in C (``map``, ``tuple``) rather than element by element: a re-read Lead has
    some forty fields, and a re-sync decodes tens of thousands of such states, where the
    element-wise form cost more than decoding the JSON (bench/RESULTS.md, Re-sync)."""
    if set(map(type, stored.values())) - {list, tuple}:
        raise ValueError(f"a version is not [commit ms, commit number, sequence]: {stored!r:.120}")
    versions = dict(zip(stored, map(tuple, stored.values()), strict=True))
    if set(map(len, versions.values())) - {3}:
        raise ValueError(f"a version is not [commit ms, commit number, sequence]: {stored!r:.120}")
    return versions


def event_version(event: ChangeEvent) -> Version:
    """Total order of changes to one record: commit time, then commit, then sequence."""
    header = event.header
    return (header.commit_timestamp, header.commit_number, header.sequence_number)


def _wins(
    new_version: Version, new_value: Any, old_version: Version | None, old_value: Any
) -> bool:
    """Last writer wins; an exact version tie is settled by the value so the result is order-free."""
    if old_version is None or new_version > old_version:
        return True
    if new_version < old_version:
        return False
    return _canonical(new_value) > _canonical(old_value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def merge_event(state: RecordState | None, event: ChangeEvent, record_id: str) -> RecordState:
    """Fold one change event into the state of ``record_id`` (one of the event's record ids).

    GAP_* events carry no field values (the processor re-reads those records over REST and
    feeds the result back as SNAPSHOT events), so they leave the state unchanged.
    """
    if record_id not in event.record_ids:
        raise ValueError(
            f"record {record_id!r} is not among the event's recordIds {list(event.record_ids)}; "
            "pass one of the ids the event names"
        )
    if state is None:
        state = RecordState(sobject=event.entity, record_id=record_id)
    elif state.sobject != event.entity or state.record_id != record_id:
        raise ValueError(
            f"cannot merge a {event.entity} event for {record_id} into the state of "
            f"{state.sobject} {state.record_id}"
        )
    if event.is_gap:
        return state

    version = event_version(event)
    change_type = event.change_type
    fields = dict(state.fields)
    versions = dict(state.versions)
    if change_type in _FIELD_SETTING_TYPES:
        compounds = _Compounds(versions)
        for name, child, value in _assignments(event.fields):
            _assign(fields, versions, compounds, name, child, value, version)

    deleted = state.deleted
    if change_type in ("DELETE", "UNDELETE"):
        now_deleted = change_type == "DELETE"
        if _wins(version, now_deleted, versions.get(DELETED_KEY), deleted):
            deleted = now_deleted
            versions[DELETED_KEY] = version

    created_ms = state.created_ms
    if change_type == "CREATE":
        commit_ms = event.header.commit_timestamp
        created_ms = commit_ms if created_ms is None else min(created_ms, commit_ms)

    # Built directly: ``dataclasses.replace`` looks the fields up again on every event.
    return RecordState(
        state.sobject,
        state.record_id,
        fields,
        versions,
        created_ms,
        deleted,
        _merge_meta(state.meta, event, version),
    )


def _assignments(values: Mapping[str, Any]) -> Iterator[tuple[str, str | None, Any]]:
    """(field, compound child or None, value): compound fields (``Name``, ``Address``) come
    nested from the decoder and as dotted names (``Address.City``) from nulledFields."""
    for name, value in values.items():
        if isinstance(value, Mapping):
            for child, child_value in value.items():
                yield name, child, child_value
        elif "." in name:
            parent, _, child = name.partition(".")
            yield parent, child, value
        else:
            yield name, None, value


class _Compounds:
    """The fields that have a child's version in ``versions`` (``Address`` for
    ``Address.City``), found the first time a merge asks: most events never do."""

    __slots__ = ("_names", "_versions")

    def __init__(self, versions: dict[str, Version]) -> None:
        self._versions = versions
        self._names: set[str] | None = None

    def __contains__(self, name: str) -> bool:
        if self._names is None:
            self._names = {key.partition(".")[0] for key in self._versions if "." in key}
        return name in self._names

    def add(self, name: str) -> None:
        if self._names is not None:  # else found in ``versions``, which has the child
            self._names.add(name)


def _assign(
    fields: dict[str, Any],
    versions: dict[str, Version],
    compounds: _Compounds,
    name: str,
    child: str | None,
    value: Any,
    version: Version,
) -> None:
    """Last-writer-wins for one field or one compound child. A whole compound value and its
    children compete on versions too, so mixing both stays order-independent.
    Only fields in ``compounds`` are searched for their children's versions: searching
    under every field set to null made a re-read record of forty fields cost forty times
    forty steps."""
    if child is None:
        current = fields.get(name)
        newest = versions.get(name)
        # children exist only under a field already set to a dict (or nulled after one)
        if (
            name in fields
            and (current is None or isinstance(current, Mapping))
            and name in compounds
        ):
            prefix = f"{name}."
            for key, child_version in versions.items():
                if key.startswith(prefix) and (newest is None or child_version > newest):
                    newest = child_version
        if _wins(version, value, newest, current):
            fields[name] = value
            versions[name] = version
        return
    key = f"{name}.{child}"
    current = fields.get(name)
    compound = dict(current) if isinstance(current, Mapping) else {}
    whole = versions.get(name)
    if whole is not None and version <= whole:
        return
    if _wins(version, value, versions.get(key), compound.get(child)):
        compound[child] = value
        fields[name] = compound
        versions[key] = version
        compounds.add(name)


def _merge_meta(meta: dict[str, Any], event: ChangeEvent, version: Version) -> dict[str, Any]:
    merged = dict(meta)
    user = event.header.commit_user
    if user:
        if event.change_type == "CREATE":
            previous = merged.get("created_by")
            merged["created_by"] = user if previous is None else min(previous, user)
        current = merged.get("commit_user")
        if current is None or _wins(version, user, tuple(current[0]), current[1]):
            merged["commit_user"] = [version, user]
    owner = event.fields.get("OwnerId")
    if "OwnerId" in event.fields and event.change_type in _FIELD_SETTING_TYPES:
        entry = [list(version), user or "", event.origin_client() or ""]
        current = merged.get("owner_set")
        if current is None or _wins(version, entry[1:], tuple(current[0]), current[1:]):
            merged["owner_set"] = entry
    if isinstance(owner, str) and owner and event.change_type in _FIELD_SETTING_TYPES:
        seen = dict(merged.get("owner_first_seen") or {})
        commit_ms = event.header.commit_timestamp
        seen[owner] = min(seen.get(owner, commit_ms), commit_ms)
        merged["owner_first_seen"] = seen
    completed_ms = task_completion_ms(event)
    if completed_ms is not None:
        previous = merged.get("first_completed_ms")
        merged["first_completed_ms"] = (
            completed_ms if previous is None else min(previous, completed_ms)
        )
    return merged


def is_true(value: Any) -> bool:
    """A checkbox value that is true: ``True``, or ``"true"`` in any case (JSON delivery)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def completes_task(values: Mapping[str, Any]) -> bool:
    """Task field values that say it is done: ``Status`` Completed or ``IsClosed`` true."""
    return values.get("Status") == "Completed" or is_true(values.get("IsClosed"))


def task_completion_ms(event: ChangeEvent) -> int | None:
    """When a Task change completes the task: its ``CompletedDateTime``, else its commit
    time; None for any other change. A malformed ``CompletedDateTime`` counts as absent here
    (the first-touch step reports it, reading the field)."""
    if event.entity != "Task" or event.change_type not in _FIELD_SETTING_TYPES:
        return None
    if not completes_task(event.fields):
        return None
    try:
        completed_at = parse_sf_datetime(event.fields.get("CompletedDateTime"))
    except EventFormatError:
        completed_at = None
    return event.header.commit_timestamp if completed_at is None else to_epoch_ms(completed_at)


def fold_events(events: list[ChangeEvent], record_id: str) -> RecordState | None:
    """Convenience: the state of ``record_id`` after all ``events`` (None when there are none)."""
    state: RecordState | None = None
    for event in events:
        if record_id in event.record_ids:
            state = merge_event(state, event, record_id)
    return state
