"""REST re-sync: close the gaps CDC cannot deliver by re-reading records and applying them.

Salesforce publishes gap events (GAP_CREATE/UPDATE/DELETE/UNDELETE: records changed
outside the normal save path, header only), GAP_OVERFLOW (a transaction changed more
records than CDC carries) and refuses replay ids that expired; in each case the ledger
holds an open *re-sync window* (``kpi_pipeline.app.processing`` records gaps, ``ingest``
refused replay ids). This adapter (no Dagster) closes them:

* ``gap`` windows name their records: re-read them with ``WHERE Id IN`` (<= 200 per
  query); a record the org no longer returns was deleted (GAP_DELETE, or deleted since);
* ``gap_overflow`` and ``replay_id_invalid`` windows re-read every record of the window's
  entities modified since the window started.

What to re-read comes from the org itself (``OrgDescription``), never from the sandbox's
schemas: an entity's SELECT list is every field of the newest GetSchema answer for it staged
in the ledger with the events (``Ledger.staged_schemas``), else of its sObject describe over
REST; a channel's entities are ``/data/<Entity>ChangeEvent``'s one, or those whose events
were staged on it (before any was: the entities the workloads read).

Every re-read record becomes a ``ChangeEvent`` that ``BatchProcessor.process`` applies
through the same workloads as CDC. Its version is the record's ``LastModifiedDate`` with
commit and sequence number 0, so under the per-field last-writer-wins merge
(``workloads/records.py``) a re-read never overrides a change CDC delivered with a newer
commit time, and loses an exact tie (CDC commit numbers are positive). Its
``changeOrigin`` (``RESYNC_ORIGIN``) carries no ``client=`` part, so the processor does not
mistake it for an echo of our own write-back.

Owner changes are dated from the org's field history, not from ``LastModifiedDate``: for
the Leads a window re-reads, ``LeadHistory`` (``Field = 'Owner'``) says when each owner was
given and by whom. Each user's first appearance becomes an owner-only UPDATE at that
``CreatedDate`` (commit and sequence 0, like every re-read event), which feeds the
processor's "first transition to a user owner" (``Owner_Assigned_At__c``, latency) at the
real hand-over time even when the lead was modified again before the re-read. Of
the two rows a real org writes for a change involving a queue (ids and names), the one whose
``NewValue`` is an id is used. The assignment still only moves earlier (the ledger keeps the
earliest), so re-running a window, or a later run seeing a later-dated change, never moves
it later. When the org has no history (the query fails with INVALID_TYPE, or answers no row
for any of the Leads), owners are dated at ``LastModifiedDate`` as before, with a warning
and ``errors_total{area="resync_owner_history"}``.

Time windows are read up to ``now``, not to the window's end: a record changed inside the
window and again after it has a ``LastModifiedDate`` past the window, and CDC's later
UPDATE only carried the fields *it* changed.

Idempotent: only open windows are worked on, and applying the same re-read twice leaves
the same state (same versions, same values). A failure leaves the window open with the
error in its detail (``resync_error``), and ``windows_due`` backs retries off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as ledger_tables
from kpi_pipeline.adapters.ledger.store import WINDOW_OPEN, Ledger, ResyncWindow
from kpi_pipeline.adapters.pubsub.schemas import sf_type_of
from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.events import (
    ChangeEvent,
    ChangeEventHeader,
    format_sf_datetime,
    parse_sf_datetime,
    to_epoch_ms,
)
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

RESYNC_ORIGIN = "com/kpi_pipeline/app/resync"  # changeOrigin of re-read events (no client=)
REASON_GAP, REASON_OVERFLOW, REASON_REPLAY = "gap", "gap_overflow", "replay_id_invalid"
TIME_WINDOW_REASONS = frozenset({REASON_OVERFLOW, REASON_REPLAY})
EVENTS_PER_PROCESS_CALL = 1000  # bounds one ledger transaction of the processor
RETRY_BASE = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=1)
MAX_RUN_KEY_PARTS_CHARS = 200


class ResyncError(ValueError):
    """A window the re-sync cannot work on as recorded (the message says why and what to do)."""


class RecordReader(Protocol):
    """What the re-sync needs of ``kpi_pipeline.adapters.salesforce.rest.SalesforceRest``."""

    def query_by_ids(
        self, sobject: str, fields: Sequence[str], ids: Iterable[str]
    ) -> list[dict[str, Any]]: ...

    def query_modified_since(
        self, sobject: str, fields: Sequence[str], since: datetime, until: datetime | None = None
    ) -> list[dict[str, Any]]: ...


class HistoryReader(Protocol):
    """Field history (``SalesforceRest.field_history``); raises an error with
    ``error_code == "INVALID_TYPE"`` when the org has no history object."""

    def field_history(
        self, sobject: str, field: str, ids: Iterable[str]
    ) -> list[dict[str, Any]]: ...


class Processor(Protocol):
    def process(self, events: Sequence[ChangeEvent]) -> dict[str, Any]: ...


@dataclass
class ResyncReport:
    """What one window's re-sync did; ``status`` is closed, failed or skipped."""

    window_id: int
    channel: str
    reason: str
    status: str
    records_read: int = 0
    events_applied: int = 0
    deleted: int = 0
    missing: int = 0
    entities: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    error: str | None = None
    routed: int = 0
    first_responses: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the org's description: entities and their fields --------------------------------

# Fields REST has and change events do not (describe lists them; CDC schemas never do).
_REST_ONLY_FIELDS = frozenset(
    {"Id", "IsDeleted", "SystemModstamp", "LastViewedDate", "LastReferencedDate"}
)
# The entities the workloads read, in the order a re-read applies them (Leads before the
# activities that answer them); the other entities a channel carries come after.
WORKLOAD_ENTITIES = ("Lead", "Task", "EmailMessage")


def _rest_prefix(parent: str) -> str:
    """REST flattens a compound's children under a prefix: BillingAddress -> BillingCity;
    Lead's Address and the person Name have none (City, FirstName)."""
    return parent.removesuffix("Address") if parent.endswith("Address") else ""


@dataclass(frozen=True)
class EntityFields:
    """An entity's CDC body fields, and how REST names them (compound children flattened)."""

    plain: tuple[str, ...]
    compounds: Mapping[str, tuple[str, ...]]  # parent -> its children as CDC names them
    datetimes: frozenset[str]

    @staticmethod
    def rest_name(parent: str, child: str) -> str:
        return _rest_prefix(parent) + child

    @property
    def select(self) -> tuple[str, ...]:
        children = [self.rest_name(p, c) for p, parts in self.compounds.items() for c in parts]
        # LastModifiedById names the last writer (commitUser); not every schema carries it.
        return tuple(dict.fromkeys([*self.plain, *children, "LastModifiedById"]))

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> EntityFields:
        """From a change-event schema as GetSchema serves it (field 0 is the header; a
        repeated compound type is a reference by name to the record defined first)."""
        plain: list[str] = []
        compounds: dict[str, tuple[str, ...]] = {}
        datetimes: set[str] = set()
        named: dict[str, Mapping[str, Any]] = {}
        for spec in schema["fields"][1:]:
            branches = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            record = None
            for branch in branches:
                if isinstance(branch, Mapping) and branch.get("type") == "record":
                    record = branch
                    named[str(branch["name"]).rsplit(".", 1)[-1]] = branch
                elif isinstance(branch, str) and branch.rsplit(".", 1)[-1] in named:
                    record = named[branch.rsplit(".", 1)[-1]]
            if record is not None:
                # Address's Xyz is in CDC schemas only; REST (and so SOQL) does not know it.
                children = [c["name"] for c in record["fields"] if c["name"] != "Xyz"]
                compounds[spec["name"]] = tuple(children)
                continue
            plain.append(spec["name"])
            if sf_type_of(spec) in ("DateTime", "Date"):
                datetimes.add(spec["name"])
        return cls(tuple(plain), compounds, frozenset(datetimes))

    @classmethod
    def from_describe(cls, describe: Mapping[str, Any]) -> EntityFields:
        """From ``sobjects/<Type>/describe``: compound children carry ``compoundFieldName``;
        formula fields and the fields CDC never carries are left out."""
        fields = [f for f in describe.get("fields") or () if isinstance(f, Mapping)]
        parents = {f.get("compoundFieldName") for f in fields} - {None}
        plain: list[str] = []
        compounds: dict[str, list[str]] = {}
        datetimes: set[str] = set()
        for spec in fields:
            name = str(spec.get("name") or "")
            if not name or name in _REST_ONLY_FIELDS or spec.get("calculated"):
                continue
            parent = spec.get("compoundFieldName")
            if parent:
                prefix = _rest_prefix(parent)
                child = name[len(prefix) :] if name.startswith(prefix) else name
                compounds.setdefault(parent, []).append(child)
            elif name not in parents and spec.get("type") not in ("address", "location"):
                plain.append(name)
                if spec.get("type") in ("datetime", "date"):
                    datetimes.add(name)
        return cls(tuple(plain), {p: tuple(c) for p, c in compounds.items()}, frozenset(datetimes))


def entity_of_schema(schema: Mapping[str, Any]) -> str | None:
    """``LeadChangeEvent`` -> Lead, ``Foo__ChangeEvent`` -> Foo__c; None for other records."""
    name = str(schema.get("name") or "").rsplit(".", 1)[-1]
    if not name.endswith("ChangeEvent") or name == "ChangeEvent":
        return None
    entity = name[: -len("ChangeEvent")]
    return entity + "c" if entity.endswith("__") else entity


def entity_of_channel(channel: str) -> str | None:
    """The one entity of a standard channel ``/data/<Entity>ChangeEvent``, else None."""
    if not channel.startswith("/data/") or not channel.endswith("ChangeEvent"):
        return None
    return entity_of_schema({"name": channel[len("/data/") :]})


class OrgDescription:
    """What the re-sync knows of the org, from the org itself: the GetSchema answers staged
    in the ledger with the events (the most recent per entity), else sObject describe over
    REST; and which entities a channel carries, from the events staged on it.

    One per re-sync pass: the staged schemas are read once."""

    def __init__(self, ledger: Ledger, rest: Any = None) -> None:
        self._ledger = ledger
        self._describe = getattr(rest, "describe", None)
        self._staged: list[tuple[str, dict[str, Any]]] | None = None
        self._fields: dict[str, EntityFields] = {}
        self._history = getattr(rest, "field_history", None)
        self._no_history = "" if self._history else "the REST reader cannot read field history"

    def _schemas(self, channel: str | None = None) -> list[dict[str, Any]]:
        if channel is not None:
            return [json.loads(text) for _, text in self._ledger.staged_schemas(channel)]
        if self._staged is None:
            self._staged = [
                (schema_id, json.loads(text)) for schema_id, text in self._ledger.staged_schemas()
            ]
        return [schema for _, schema in self._staged]

    def fields(self, entity: str) -> EntityFields:
        cached = self._fields.get(entity)
        if cached is not None:
            return cached
        schema = next((s for s in self._schemas() if entity_of_schema(s) == entity), None)
        if schema is not None:
            found = EntityFields.from_schema(schema)
        elif self._describe is not None:
            found = EntityFields.from_describe(self._describe(entity))
        else:
            raise ResyncError(
                f"the ledger holds no {entity}ChangeEvent schema (no {entity} event was staged "
                "yet) and the REST reader cannot describe sObjects, so the re-sync does not "
                f"know {entity}'s fields; pass a reader with describe() (SalesforceRest)"
            )
        self._fields[entity] = found
        return found

    def entities_for_channel(self, channel: str) -> tuple[str, ...]:
        """``/data/<Entity>ChangeEvent``: that entity. Other channels (``/data/ChangeEvents``,
        custom ``__chn`` ones): the entities of the events staged on it, or, before any
        was staged, the entities the workloads read."""
        single = entity_of_channel(channel)
        if single is not None:
            return (single,)
        multi = channel == "/data/ChangeEvents" or (
            channel.startswith("/data/") and channel.endswith("__chn")
        )
        if not multi:
            raise ResyncError(
                f"cannot tell which entities channel {channel!r} carries; use "
                "/data/<Entity>ChangeEvent, /data/ChangeEvents or a custom /data/<Name>__chn, "
                "or pass entities_for_channel="
            )
        carried = {entity_of_schema(s) for s in self._schemas(channel)} - {None}
        if not carried:
            log.info(
                "no event of %s is staged yet; re-reading the entities the workloads read %s",
                channel,
                WORKLOAD_ENTITIES,
            )
            return WORKLOAD_ENTITIES
        first = [e for e in WORKLOAD_ENTITIES if e in carried]
        return (*first, *sorted(e for e in carried if e not in WORKLOAD_ENTITIES))

    def owner_changes(self, lead_ids: Sequence[str]) -> dict[str, list[OwnerChange]] | None:
        """Each lead's owner changes from ``LeadHistory``, oldest first; None when the org
        has none to give (tracking off: INVALID_TYPE or no row at all), after saying so."""
        if not lead_ids:
            return {}
        if self._history is None:
            reason = self._no_history
        else:
            try:
                rows = self._history("Lead", "Owner", lead_ids)
            except Exception as exc:
                if getattr(exc, "error_code", None) != "INVALID_TYPE":
                    raise  # transient or unexpected: the window fails and is retried
                self._history = None  # not there for this pass's other windows either
                reason = self._no_history = str(exc)
            else:
                changes = owner_changes_from_history(rows)
                if changes:
                    return changes
                reason = (
                    f"LeadHistory has no Owner row for any of the {len(lead_ids)} re-read "
                    "lead(s); field history tracking for Lead Owner may be off"
                )
        metrics.record_error("resync_owner_history")
        log.warning(
            "re-sync: no owner history (%s); re-read owners are dated at LastModifiedDate, "
            "so an assignment may be dated later than the real hand-over",
            reason,
        )
        return None


# --- owner history ----------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerChange:
    """One owner change of a lead, from its id-form LeadHistory row."""

    at_ms: int
    old_owner: str | None
    new_owner: str
    by: str


_OWNER_ID = re.compile(r"^(?:005|00G)[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")


def owner_changes_from_history(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[OwnerChange]]:
    """Lead id -> its owner changes, oldest first. Only rows whose ``NewValue`` is a user
    or queue id count: a real org writes a second row with the owners' names for a change
    involving a queue, which names nobody we could match."""
    changes: dict[str, list[OwnerChange]] = {}
    for row in rows:
        new, old = row.get("NewValue"), row.get("OldValue")
        lead_id = str(row.get("LeadId") or "")
        if not lead_id or not isinstance(new, str) or not _OWNER_ID.match(new):
            continue
        at_ms = _epoch_ms(row.get("CreatedDate"), what=f"LeadHistory of {lead_id} CreatedDate")
        if at_ms is None:
            continue
        old_id = old if isinstance(old, str) and _OWNER_ID.match(old) else None
        by = str(row.get("CreatedById") or "")
        changes.setdefault(lead_id, []).append(OwnerChange(at_ms, old_id, new, by))
    for found in changes.values():
        found.sort(key=lambda c: c.at_ms)
    return changes


# --- REST record -> change event ------------------------------------------------------


def _epoch_ms(value: Any, *, what: str) -> int | None:
    try:
        parsed = parse_sf_datetime(value)
    except ValueError as exc:
        raise ResyncError(f"{what}: {exc}") from exc
    return None if parsed is None else to_epoch_ms(parsed)


def rest_body(entity: str, row: Mapping[str, Any], spec: EntityFields) -> dict[str, Any]:
    """A REST record in the shape the CDC decoder produces: compounds nested, DateTime and
    Date values as epoch ms, null values kept (the org says those fields are empty)."""
    body: dict[str, Any] = {}
    for name in spec.plain:
        if name not in row:
            continue
        value = row[name]
        if name in spec.datetimes and value is not None:
            value = _epoch_ms(value, what=f"{entity} {row.get('Id')} {name}")
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
    modified_ms = _epoch_ms(
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
    created_ms = _epoch_ms(row.get("CreatedDate"), what=f"{entity} {record_id} CreatedDate")
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


# --- windows --------------------------------------------------------------------------


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _up_to_second(value: datetime) -> datetime:
    # SOQL dateTime literals have whole seconds; round the end up so nothing before it is cut off.
    floor = value.replace(microsecond=0)
    return floor if floor == value else floor + timedelta(seconds=1)


@dataclass
class _Plan:
    """What to read for one window: ids per entity, or entities over a time range."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    entities: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None


def plan_window(
    window: ResyncWindow, now: datetime, channel_entities: Callable[[str], Sequence[str]]
) -> _Plan:
    """What a window asks to re-read; ``ResyncError`` when its record cannot tell."""
    detail = window.detail
    if window.reason == REASON_GAP:
        entity = detail.get("entity")
        ids = [str(r) for r in detail.get("record_ids") or ()]
        if not entity or not ids:
            raise ResyncError(
                f"gap window {window.id} names no entity or record ids (detail {detail!r:.200}); "
                "it must come from BatchProcessor's gap handling"
            )
        if any("*" in rid for rid in ids):
            # Wildcard ids (field type conversions) stand for every record of the entity.
            return _time_plan([entity], window, now)
        # GAP_DELETE needs no special case: a record the query does not return is deleted.
        return _Plan(ids={entity: ids})
    if window.reason == REASON_OVERFLOW:
        entity = detail.get("entity")
        return _time_plan(
            [entity] if entity else list(channel_entities(window.channel)), window, now
        )
    if window.reason == REASON_REPLAY:
        return _time_plan(list(channel_entities(window.channel)), window, now)
    raise ResyncError(
        f"resync window {window.id} has reason {window.reason!r}; the re-sync handles "
        f"{[REASON_GAP, REASON_OVERFLOW, REASON_REPLAY]}"
    )


def _time_plan(entities: list[str], window: ResyncWindow, now: datetime) -> _Plan:
    # No known start (the cursor never saw a commit time): re-read the entities in full.
    since = _time(window.from_time_ms) if window.from_time_ms is not None else _time(0)
    return _Plan(entities=entities, since=since, until=_up_to_second(now))


def _read(rest: RecordReader, plan: _Plan, org: OrgDescription) -> dict[str, list[dict[str, Any]]]:
    if plan.ids:
        return {
            entity: rest.query_by_ids(entity, org.fields(entity).select, ids)
            for entity, ids in plan.ids.items()
        }
    assert plan.since is not None
    return {
        entity: rest.query_modified_since(entity, org.fields(entity).select, plan.since, plan.until)
        for entity in plan.entities
    }


def _states(ledger: Ledger, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordState]:
    with ledger.read() as conn:
        return ledger.records(conn, keys)


def window_events(
    window: ResyncWindow,
    plan: _Plan,
    rows: Mapping[str, list[dict[str, Any]]],
    states: Mapping[tuple[str, str], RecordState],
    now: datetime,
    org: OrgDescription,
) -> tuple[list[ChangeEvent], int, int]:
    """(events, deletions, missing): the re-read as change events, entity by entity in
    the plan's order (Leads before the activities that answer them)."""
    source = ResyncSource(window)
    events: list[ChangeEvent] = []
    deleted = missing = 0
    for entity, entity_rows in rows.items():
        found = set()
        history: Mapping[str, list[OwnerChange]] = {}
        if entity == "Lead" and entity_rows:
            history = org.owner_changes([str(r.get("Id")) for r in entity_rows]) or {}
        for row in entity_rows:
            found.add(row.get("Id"))
            record_id = str(row.get("Id"))
            events += events_for_record(
                source,
                entity,
                row,
                states.get((entity, record_id)),
                org.fields(entity),
                history.get(record_id, ()),
            )
        for record_id in plan.ids.get(entity, ()):
            if record_id in found:
                continue
            state = states.get((entity, record_id))
            if state is None:
                missing += 1  # gone before the ledger ever saw it: nothing to delete
                continue
            # Not returned by the query: deleted (the query skips the recycle bin). The gap's
            # commit time is when the deletion happened at the latest we know of.
            at_ms = window.from_time_ms if window.from_time_ms is not None else to_epoch_ms(now)
            events.append(source.event(entity, record_id, "DELETE", at_ms, {}))
            deleted += 1
    return events, deleted, missing


def resync_window(
    ledger: Ledger,
    rest: RecordReader,
    processor: Processor,
    window: ResyncWindow,
    *,
    now: datetime,
    entities_for_channel: Callable[[str], Sequence[str]] | None = None,
    org: OrgDescription | None = None,
) -> ResyncReport:
    """Re-read and apply one window, then close it; on failure leave it open with the error.

    ``org``: where fields and channel entities come from (default: the staged GetSchema
    answers, else describe over ``rest``); ``entities_for_channel`` overrides the latter."""
    report = ResyncReport(window.id, window.channel, window.reason, "skipped")
    if window.status != WINDOW_OPEN:
        return report
    org = org or OrgDescription(ledger, rest)
    try:
        plan = plan_window(window, now, entities_for_channel or org.entities_for_channel)
        report.entities = sorted(plan.ids) or list(plan.entities)
        report.since = format_sf_datetime(plan.since) or None
        report.until = format_sf_datetime(plan.until) or None
        rows = _read(rest, plan, org)
        report.records_read = sum(len(r) for r in rows.values())
        keys = {(e, str(r.get("Id"))) for e, rs in rows.items() for r in rs}
        keys |= {(e, rid) for e, ids in plan.ids.items() for rid in ids}
        events, report.deleted, report.missing = window_events(
            window, plan, rows, _states(ledger, keys), now, org
        )
        _apply(processor, events, report)
    except Exception as exc:  # any failure: the window stays open and says why
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"[:1000]
        log.warning("re-sync of window %s (%s) failed: %s", window.id, window.reason, report.error)
        _note_failure(ledger, window.id, report, now)
        return report
    ledger.close_resync_window(
        window.id, detail={"resync": _closing_detail(report, now), "resync_error": None}
    )
    report.status = "closed"
    return report


def _apply(processor: Processor, events: list[ChangeEvent], report: ResyncReport) -> None:
    for start in range(0, len(events), EVENTS_PER_PROCESS_CALL):
        chunk = events[start : start + EVENTS_PER_PROCESS_CALL]
        summary = processor.process(chunk)
        report.events_applied += len(chunk)
        report.routed += int(summary.get("routing", {}).get("routed", 0))
        report.first_responses += int(summary.get("first_touch", {}).get("improved", 0))


def _closing_detail(report: ResyncReport, now: datetime) -> dict[str, Any]:
    return {
        "records_read": report.records_read,
        "events_applied": report.events_applied,
        "deleted": report.deleted,
        "missing": report.missing,
        "entities": report.entities,
        "since": report.since,
        "until": report.until,
        "finished_at": format_sf_datetime(now),
    }


def _note_failure(ledger: Ledger, window_id: int, report: ResyncReport, now: datetime) -> None:
    """Keep the window open; record the error and the attempt count in its detail.

    The ledger has no call for updating an open window, so this writes the one column
    through the ledger's own transaction helper and table definition.
    """
    table = ledger_tables.resync_windows
    with ledger.write() as conn:
        row = conn.execute(
            sa.select(table.c.status, table.c.detail).where(table.c.id == window_id)
        ).one_or_none()
        if row is None or row.status != WINDOW_OPEN:
            return  # closed meanwhile by a concurrent run: nothing to report
        detail = dict(row.detail or {})
        detail.update(
            resync_error=report.error,
            resync_failed_at=format_sf_datetime(now),
            resync_attempts=int(detail.get("resync_attempts") or 0) + 1,
        )
        conn.execute(
            table.update().where(table.c.id == window_id).values(detail=json.loads(dumps(detail)))
        )


def resync_open_windows(
    ledger: Ledger,
    rest: RecordReader,
    processor: Processor,
    *,
    now: datetime,
    entities_for_channel: Callable[[str], Sequence[str]] | None = None,
    window_ids: Collection[int] | None = None,
) -> list[ResyncReport]:
    """Re-sync every open window (or those of ``window_ids`` still open), oldest first.

    One failing window does not stop the others; each report says what happened. What to
    re-read comes from the org (``OrgDescription``): never from the sandbox's schemas.
    """
    org = OrgDescription(ledger, rest)
    windows = ledger.open_resync_windows()
    if window_ids is not None:
        wanted = set(window_ids)
        windows = [w for w in windows if w.id in wanted]
    return [
        resync_window(
            ledger,
            rest,
            processor,
            window,
            now=now,
            entities_for_channel=entities_for_channel,
            org=org,
        )
        for window in windows
    ]


# --- scheduling -----------------------------------------------------------------------


def attempts(window: ResyncWindow) -> int:
    return int(window.detail.get("resync_attempts") or 0)


def windows_due(windows: Iterable[ResyncWindow], now: datetime) -> list[ResyncWindow]:
    """Open windows worth a run now: never tried, or failed long enough ago (the wait
    doubles per failed attempt, from one minute up to an hour)."""
    due = []
    for window in windows:
        if window.status != WINDOW_OPEN:
            continue
        failed_at = parse_sf_datetime(window.detail.get("resync_failed_at"))
        tries = attempts(window)
        if failed_at is None or tries == 0:
            due.append(window)
            continue
        wait = min(RETRY_MAX, RETRY_BASE * 2 ** min(tries - 1, 10))
        if now >= failed_at + wait:
            due.append(window)
    return due


def run_key_for(windows: Iterable[ResyncWindow]) -> str:
    """The open windows and their attempt counts: the same set never launches twice, and a
    failed attempt (which bumps its count) may be retried."""
    parts = ",".join(f"{w.id}.{attempts(w)}" for w in sorted(windows, key=lambda w: w.id))
    if len(parts) > MAX_RUN_KEY_PARTS_CHARS:  # many windows: a digest keeps the key short
        parts = hashlib.sha256(parts.encode()).hexdigest()
    return f"resync:{parts}"
