"""A re-read REST record as the change events that bring the ledger's state up to it.

Versions: the record's ``LastModifiedDate`` with commit and sequence number 0, so a re-read
never overrides a change CDC delivered with a newer commit time, and loses an exact tie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.app.resync.errors import ResyncError, epoch_ms
from kpi_pipeline.app.resync.org import EntityFields
from kpi_pipeline.app.resync.owner_history import OwnerChange
from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader
from kpi_pipeline.core.resync_windows import ResyncWindow
from kpi_pipeline.core.workloads.records import RecordState

RESYNC_ORIGIN = "com/kpi_pipeline/app/resync"  # changeOrigin of re-read events (no client=)


def rest_body(entity: str, row: Mapping[str, Any], spec: EntityFields) -> dict[str, Any]:
    """A REST record in the shape the CDC decoder produces: compounds nested, DateTime and
    Date values as epoch ms, null values kept (the org says those fields are empty)."""
    body: dict[str, Any] = {}
    for name in spec.plain:
        if name not in row:
            continue
        value = row[name]
        if name in spec.datetimes and value is not None:
            value = epoch_ms(value, what=f"{entity} {row.get('Id')} {name}")
        body[name] = value
    for parent, children in spec.compounds.items():
        names = {child: spec.rest_name(parent, child) for child in children}
        parts = {child: row[rest] for child, rest in names.items() if rest in row}
        if parts:
            body[parent] = parts
    return body


def _nulled(body: Mapping[str, Any]) -> tuple[str, ...]:
    names = []
    for name, value in body.items():
        if isinstance(value, Mapping):
            names += [f"{name}.{k}" for k, v in value.items() if v is None]
        elif value is None:
            names.append(name)
    return tuple(sorted(names))


@dataclass(frozen=True)
class ResyncSource:
    """Where re-read events say they come from."""

    window: ResyncWindow

    @property
    def replay_id(self) -> bytes:
        # The window's replay id ties decisions made from the re-read back to the window.
        hex_id = self.window.from_replay_hex
        return bytes.fromhex(hex_id) if hex_id else b""

    def event(
        self,
        entity: str,
        record_id: str,
        change_type: str,
        at_ms: int,
        fields: Mapping[str, Any],
        user: str = "",
    ) -> ChangeEvent:
        header = ChangeEventHeader(
            entity_name=entity,
            record_ids=(record_id,),
            change_type=change_type,
            change_origin=f"{RESYNC_ORIGIN};window={self.window.id}",
            transaction_key=f"resync-{self.window.id}",
            sequence_number=0,  # with commit number 0: loses any tie with a CDC event
            commit_timestamp=at_ms,
            commit_number=0,
            commit_user=user,
            nulled_fields=_nulled(fields),
            changed_fields=tuple(sorted(fields)) if change_type == "UPDATE" else (),
        )
        return ChangeEvent(self.window.channel, self.replay_id, header, dict(fields))


def events_for_record(
    source: ResyncSource,
    entity: str,
    row: Mapping[str, Any],
    state: RecordState | None,
    spec: EntityFields,
    owner_changes: Sequence[OwnerChange] = (),
) -> list[ChangeEvent]:
    """The events that bring the ledger's state of one record up to the re-read.

    Null fields are sent as explicit nulls (the org says they are empty), on CREATE too, so
    a re-read applied again as an UPDATE leaves the very same state.

    Known record: UPDATE (UNDELETE if the ledger has it deleted) with every re-read field at
    version LastModifiedDate. Unknown record: CREATE. If it was modified after creation, the
    CREATE is stamped at CreatedDate (the creation time stays exact) without OwnerId (the
    owner at creation is unknown: stamping today's owner there would claim it was assigned
    at creation), followed by the UPDATE at LastModifiedDate that carries every field.

    ``owner_changes`` (the lead's owner history): each user's first change becomes an
    owner-only UPDATE at its own time, before the UPDATE at LastModifiedDate. The CREATE
    still carries no owner: a lead the pipeline never saw while it sat in a queue is not
    routed after the fact.
    """
    record_id = str(row.get("Id") or "")
    modified_ms = epoch_ms(
        row.get("LastModifiedDate"), what=f"{entity} {record_id} LastModifiedDate"
    )
    if not record_id or modified_ms is None:
        raise ResyncError(
            f"REST returned a {entity} row without Id or LastModifiedDate ({dict(row)!r:.200}); "
            "both are selected by the re-sync, so the query result is malformed"
        )
    body = rest_body(entity, row, spec)
    writer = str(row.get("LastModifiedById") or row.get("CreatedById") or "")
    handovers = _owner_events(source, entity, record_id, owner_changes, modified_ms)
    if state is not None:
        change_type = "UNDELETE" if state.deleted else "UPDATE"
        if change_type == "UNDELETE":  # an owner UPDATE before it would hit a deleted record
            return [source.event(entity, record_id, change_type, modified_ms, body, writer)]
        return [*handovers, source.event(entity, record_id, change_type, modified_ms, body, writer)]
    created_ms = epoch_ms(row.get("CreatedDate"), what=f"{entity} {record_id} CreatedDate")
    if created_ms is None or created_ms >= modified_ms:
        return [source.event(entity, record_id, "CREATE", modified_ms, body, writer)]
    creation = {k: v for k, v in body.items() if k != "OwnerId"}
    creator = str(row.get("CreatedById") or writer)
    return [
        source.event(entity, record_id, "CREATE", created_ms, creation, creator),
        *handovers,
        source.event(entity, record_id, "UPDATE", modified_ms, body, writer),
    ]


def _owner_events(
    source: ResyncSource,
    entity: str,
    record_id: str,
    changes: Sequence[OwnerChange],
    modified_ms: int,
) -> list[ChangeEvent]:
    """An owner-only UPDATE at each user's first hand-over (queues are no assignment). At
    an older version than the re-read's, they never override a field's newer value; they
    tell the processor when each user first owned the lead."""
    events, seen = [], set()
    for change in changes:
        owner = change.new_owner
        if owner in seen or not owner.startswith("005") or change.at_ms > modified_ms:
            continue
        seen.add(owner)
        fields = {"OwnerId": owner}
        events.append(source.event(entity, record_id, "UPDATE", change.at_ms, fields, change.by))
    return events
