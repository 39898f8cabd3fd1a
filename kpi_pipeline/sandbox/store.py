"""The embedded sandbox org's state: one SQLite file holding records, users/queues and the change log.

``SandboxStore`` implements both sides of ``kpi_pipeline.sandbox.changelog``:
``ChangeLogSource`` for the Pub/Sub API server and ``RecordStore`` for the REST server.
Every write appends the change event Salesforce would publish for it, in the same SQLite
transaction, so the records and the change log never disagree.

Shapes (the contract with the servers):

* Field names are those of the Avro schemas in ``kpi_pipeline.adapters.pubsub.schemas``; a write with
  an unknown field fails and names the schema to extend.
* Compound fields are nested like the Avro record (Lead ``Name`` = {Salutation, FirstName,
  LastName}, ``Address`` = {Street, City, ...}). Writers may also pass the REST-style
  children (``FirstName``, ``City``); header field lists name them ``Name.FirstName``.
* DateTime and Date values are stored as epoch milliseconds (ISO strings are accepted on
  write and converted).
* Values are checked against their field's Salesforce type (the ``Data:<type>`` docs of the
  schemas): a string in an Int field fails the write (``FieldValueError``) rather than
  reaching the change log, where it would break the Avro encoding for every subscriber.
  Unknown fields raise ``UnknownFieldError``.
* Change-event headers use the recorded-JSON keys of CONTRACTS.md §2, field lists as names.
  An UPDATE carries only the changed values; ``changedFields`` always includes
  ``LastModifiedDate`` (Salesforce stamps it on every save, so an update that changes
  nothing else still publishes an event naming only it); fields set to null are listed in
  ``nulledFields`` and absent from the body.

Field history: with ``track_owner_history`` (the default), every change of a Lead's owner
also writes ``LeadHistory`` rows in the same transaction, as an org with field history
tracking on for Lead Owner does: ``Field`` ``Owner``, ``CreatedDate`` the change's commit
time, ``CreatedById`` who made it. An owner change that involves a queue writes two rows,
one with the ids (``DataType`` ``EntityId``) and one with the owners' names (``Text``); a
user-to-user change writes the id row. Gap updates (changes made outside the normal save
path) are tracked too: history is kept apart from the change log and is not pruned with it.
``track_owner_history=False`` is an org with tracking off: no rows.

Concurrency: WAL mode, one connection per thread (and per process after a fork), and
``BEGIN IMMEDIATE`` for writes, so writers in several threads or processes serialize and
replay ids follow commit order. ``wait_for_changes`` wakes at once for writes in this
process and polls (every 50 ms) to notice writes from other processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from kpi_pipeline.adapters.pubsub.schemas import sf_type_of
from kpi_pipeline.core.bitmaps import FieldLayout
from kpi_pipeline.core.events import (
    OVERFLOW_RECORD_ID,
    EventFormatError,
    format_sf_datetime,
    parse_sf_datetime,
    to_epoch_ms,
)
from kpi_pipeline.sandbox.changelog import ALL_ENTITIES, StoredChange
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet

DEFAULT_RETENTION_MS = 72 * 3600 * 1000
KEY_PREFIXES = {
    "Lead": "00Q",
    "Task": "00T",
    "EmailMessage": "02s",
    "Contact": "003",
    "Account": "001",
    "User": "005",
    "Group": "00G",
    "EmailTemplate": "00X",
}
# Sobjects the store keeps without change events (the org's directory).
DIRECTORY_SOBJECTS = ("User", "Group")
SYSTEM_FIELDS = frozenset({"CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById"})
# Salesforce DateTime/Date fields by API name (same meaning on every sobject here).
DATETIME_FIELDS = frozenset(
    {
        "CreatedDate",
        "LastModifiedDate",
        "CompletedDateTime",
        "MessageDate",
        "Owner_Assigned_At__c",
        "First_Response_At__c",
    }
)
DATE_FIELDS = frozenset({"ActivityDate", "ConvertedDate"})
GAP_TYPES = ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE")
_POD = "5g0"  # instance + reserved characters of the 15-char id (fixed in the sandbox)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SEED_CREATED_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: when the seeded users "joined"
_ORG_DOMAIN = "kpi-sandbox.example"


class SandboxStoreError(ValueError):
    """A write or read the sandbox org refuses (unknown sobject or field, bad value)."""


class RecordNotFoundError(SandboxStoreError):
    """The record does not exist (or is deleted) in the sandbox org."""


class UnknownFieldError(SandboxStoreError):
    """A write names a field the sObject does not have (the REST server answers INVALID_FIELD)."""

    def __init__(self, message: str, *, sobject: str, field_name: str) -> None:
        super().__init__(message)
        self.sobject, self.field_name = sobject, field_name


class FieldValueError(SandboxStoreError):
    """A value does not fit its field's Salesforce type (``sf_type``, e.g. "Int", "Lookup").

    Checked on write because the value would otherwise reach the change log and fail the
    Avro encoding of every subscriber's FetchResponse that carries it."""

    def __init__(
        self, message: str, *, sobject: str, field_name: str, sf_type: str, value: Any
    ) -> None:
        super().__init__(message)
        self.sobject, self.field_name, self.sf_type, self.value = (
            sobject,
            field_name,
            sf_type,
            value,
        )


# --- ids ---------------------------------------------------------------------------------


def _checksum(id15: str) -> str:
    """Salesforce's case-safe suffix: one char per 5-char chunk, a bit per uppercase letter."""
    out = []
    for chunk_start in (0, 5, 10):
        chunk = id15[chunk_start : chunk_start + 5]
        flags = sum(1 << bit for bit, char in enumerate(chunk) if "A" <= char <= "Z")
        out.append(_CHECKSUM_CHARS[flags])
    return "".join(out)


def sf_id(prefix: str, number: int) -> str:
    """The 18-char id of the ``number``-th record with this key prefix (deterministic)."""
    if len(prefix) != 3 or number < 1:
        raise SandboxStoreError(
            f"sf_id needs a 3-char key prefix and number >= 1, got {prefix!r}, {number}"
        )
    digits = ""
    value = number
    while value:
        value, rem = divmod(value, 62)
        digits = _BASE62[rem] + digits
    id15 = prefix + _POD + digits.rjust(9, "0")
    if len(id15) != 15:
        raise SandboxStoreError(f"id number {number} is too large for a Salesforce id")
    return id15 + _checksum(id15)


# --- the seeded directory -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxUser:
    id: str
    first_name: str
    last_name: str
    role: str  # "rep" | "integration" | "automation"
    region: str = ""  # reps: "NA" | "EMEA" | "APAC"
    title: str = ""

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def email(self) -> str:
        return f"{self.first_name}.{self.last_name}@{_ORG_DOMAIN}".lower().replace(" ", "")


@dataclass(frozen=True, slots=True)
class SandboxQueue:
    id: str
    name: str
    developer_name: str


INTEGRATION_USER = SandboxUser(
    sf_id("005", 1), "Integration", "User", "integration", title="API Integration"
)
AUTOMATION_USER = SandboxUser(
    sf_id("005", 2), "Marketing", "Automation", "automation", title="Automation"
)
REPS: tuple[SandboxUser, ...] = tuple(
    SandboxUser(sf_id("005", 3 + i), first, last, "rep", region, title)
    for i, (first, last, region, title) in enumerate(
        [
            ("Ava", "Thompson", "NA", "Account Executive"),
            ("Liam", "Carter", "NA", "Sales Development Rep"),
            ("Sofia", "Martinez", "NA", "Sales Development Rep"),
            ("Emma", "Schmidt", "EMEA", "Account Executive"),
            ("Lucas", "Dubois", "EMEA", "Sales Development Rep"),
            ("Mia", "Rossi", "EMEA", "Sales Development Rep"),
            ("Hiro", "Tanaka", "APAC", "Account Executive"),
            ("Priya", "Nair", "APAC", "Sales Development Rep"),
        ]
    )
)
SEED_USERS: tuple[SandboxUser, ...] = (INTEGRATION_USER, AUTOMATION_USER, *REPS)
INBOUND_QUEUE = SandboxQueue(sf_id("00G", 1), "Inbound Leads", "Inbound_Leads")
PARTNER_QUEUE = SandboxQueue(sf_id("00G", 2), "Partner Leads", "Partner_Leads")
SEED_QUEUES: tuple[SandboxQueue, ...] = (INBOUND_QUEUE, PARTNER_QUEUE)
INTEGRATION_USER_ID = INTEGRATION_USER.id
AUTOMATION_USER_ID = AUTOMATION_USER.id
REP_USER_IDS: tuple[str, ...] = tuple(rep.id for rep in REPS)
QUEUE_IDS: tuple[str, ...] = tuple(queue.id for queue in SEED_QUEUES)


def _user_fields(user: SandboxUser) -> dict[str, Any]:
    return {
        "Name": user.name,
        "FirstName": user.first_name,
        "LastName": user.last_name,
        "Username": user.email,
        "Email": user.email,
        "IsActive": True,
        "UserType": "Standard",
        "Title": user.title,
        "Department": user.region or user.role.title(),
        "CreatedDate": _SEED_CREATED_MS,
    }


def _queue_fields(queue: SandboxQueue) -> dict[str, Any]:
    return {
        "Name": queue.name,
        "DeveloperName": queue.developer_name,
        "Type": "Queue",
        "Email": f"{queue.developer_name.lower()}@{_ORG_DOMAIN}",
        "CreatedDate": _SEED_CREATED_MS,
    }


# --- field specs from the Avro schemas -------------------------------------------------


@dataclass(frozen=True)
class _EntitySpec:
    entity: str
    fields: frozenset[str]
    compounds: Mapping[str, tuple[str, ...]]
    child_parent: Mapping[str, str]
    order: Mapping[str, int]
    types: Mapping[str, str]  # field or compound child name -> Salesforce type ("Int", ...)


@cache
def _spec(entity: str, schemas: SchemaSet = DEFAULT_SCHEMAS) -> _EntitySpec:
    layout = FieldLayout.from_schema(schemas.schemas[entity])
    compounds = {layout.names[i]: children for i, children in layout.compounds.items()}
    parents: dict[str, list[str]] = {}
    for parent, children in compounds.items():
        for child in children:
            parents.setdefault(child, []).append(parent)
    # A bare child name maps to its compound only when one compound has it (Contact's City
    # could be MailingAddress or OtherAddress: pass those as {"MailingAddress": {...}}).
    child_parent = {child: ps[0] for child, ps in parents.items() if len(ps) == 1}
    return _EntitySpec(
        entity,
        frozenset(layout.names[1:]),
        compounds,
        child_parent,
        {name: i for i, name in enumerate(layout.names)},
        _sf_types(schemas.schemas[entity]["fields"][1:]),
    )


def _sf_types(fields: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Field types from the schema docs ("Data:Int"), compound children included."""
    out: dict[str, str] = {}
    for spec in fields:
        sf_type = sf_type_of(spec)
        if sf_type and sf_type not in ("Address", "Switchable_PersonName"):
            out[spec["name"]] = sf_type
        for branch in spec["type"] if isinstance(spec["type"], list) else [spec["type"]]:
            if isinstance(branch, Mapping) and branch.get("type") == "record":
                out.update(_sf_types(branch["fields"]))
    return out


_TEXT_TYPES = frozenset({"Text", "Id", "Picklist", "Email", "Phone", "Url", "TextArea", "Lookup"})


def field_type(sobject: str, name: str, schemas: SchemaSet = DEFAULT_SCHEMAS) -> str | None:
    """The Salesforce type ("Int", "Lookup", ...) of a field or compound child, or None."""
    if sobject not in ALL_ENTITIES:
        return None
    return _spec(sobject, schemas).types.get(name)


def _check_type(sobject: str, name: str, value: Any, spec: _EntitySpec) -> None:
    sf_type = spec.types.get(name)
    if value is None or sf_type is None or sf_type in ("DateTime", "Date"):
        return  # DateTimes and Dates are checked while converting them to epoch ms
    if sf_type == "Boolean":
        fits = isinstance(value, bool)
    elif sf_type == "Int":
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif sf_type in ("Number", "Currency"):
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    else:  # Lookups are strings here; their id shape is checked by the REST server only
        fits = sf_type not in _TEXT_TYPES or isinstance(value, str)
    if not fits:
        raise FieldValueError(
            f"{sobject}.{name} is a {sf_type} field; {value!r} is not a valid value for it",
            sobject=sobject,
            field_name=name,
            sf_type=sf_type,
            value=value,
        )


def _check_sobject(sobject: str) -> None:
    if sobject not in ALL_ENTITIES and sobject not in DIRECTORY_SOBJECTS:
        raise SandboxStoreError(
            f"the sandbox org has no sObject {sobject!r}; it keeps {list(ALL_ENTITIES)} "
            f"(with change events) and {list(DIRECTORY_SOBJECTS)}"
        )


def _check_entity(entity: str) -> None:
    if entity not in ALL_ENTITIES:
        raise SandboxStoreError(
            f"{entity!r} has no change events in the sandbox org; writable entities: {list(ALL_ENTITIES)}"
        )


def _to_ms(name: str, value: Any, sobject: str = "") -> int | None:
    try:
        parsed = parse_sf_datetime(value)
    except EventFormatError as exc:
        raise FieldValueError(
            f"field {name}: {exc}",
            sobject=sobject,
            field_name=name,
            sf_type="Date" if name in DATE_FIELDS else "DateTime",
            value=value,
        ) from exc
    return None if parsed is None else to_epoch_ms(parsed)


def _coerce(name: str, value: Any, sobject: str = "") -> Any:
    if value is not None and (name in DATETIME_FIELDS or name in DATE_FIELDS):
        return _to_ms(name, value, sobject)
    return value


def normalize_values(
    sobject: str,
    values: Mapping[str, Any],
    *,
    allow_system: bool = False,
    schemas: SchemaSet = DEFAULT_SCHEMAS,
) -> dict[str, Any]:
    """Writer values in the stored shape (compounds nested, DateTimes in ms), validated."""
    _check_sobject(sobject)
    if sobject in DIRECTORY_SOBJECTS:
        return {k: _coerce(k, v) for k, v in values.items() if k not in ("Id", "attributes")}
    spec = _spec(sobject, schemas)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("Id", "attributes"):
            continue  # REST bodies carry them; the record id is the call's argument
        if name in SYSTEM_FIELDS and not allow_system:
            raise SandboxStoreError(
                f"{sobject}.{name} is set by the org itself (audit field); drop it from the values"
            )
        if name in spec.compounds:
            out.setdefault(name, {}).update(_compound_values(sobject, name, value, spec))
        elif name in spec.child_parent:
            _check_type(sobject, name, value, spec)
            out.setdefault(spec.child_parent[name], {})[name] = value
        elif name in spec.fields:
            _check_type(sobject, name, value, spec)
            out[name] = _coerce(name, value, sobject)
        else:
            raise UnknownFieldError(
                f"{sobject} has no field {name!r} in the {sobject}ChangeEvent schema; add it to "
                "kpi_pipeline/adapters/pubsub/schemas.py (or as a custom field: "
                "SandboxStore.add_custom_field) or stop writing it",
                sobject=sobject,
                field_name=name,
            )
    return out


def _compound_values(sobject: str, name: str, value: Any, spec: _EntitySpec) -> dict[str, Any]:
    children = spec.compounds[name]
    if value is None:
        return dict.fromkeys(children)
    if not isinstance(value, Mapping):
        raise SandboxStoreError(
            f"{sobject}.{name} is a compound field; pass a mapping of {list(children)} "
            f"(or the children as top-level keys), not {value!r}"
        )
    unknown = set(value) - set(children)
    if unknown:
        raise UnknownFieldError(
            f"{sobject}.{name} has no parts {sorted(unknown)}; parts: {list(children)}",
            sobject=sobject,
            field_name=sorted(unknown)[0],
        )
    for child, child_value in value.items():
        _check_type(sobject, child, child_value, spec)
    return dict(value)


def rest_view(sobject: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record as Salesforce REST returns it: compounds flattened beside a
    read-only compound value, DateTimes as ISO strings, Dates as YYYY-MM-DD."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, Mapping):
            # REST flattens Lead's Address as City, Contact's MailingAddress as MailingCity.
            prefix = name.removesuffix("Address") if name.endswith("Address") else ""
            out.update({f"{prefix}{child}": v for child, v in value.items()})
            if name == "Name":
                parts = [value.get("FirstName"), value.get("LastName")]
                out["Name"] = " ".join(p for p in parts if p) or None
            else:
                out[name] = dict(value)
        elif name in DATETIME_FIELDS or name == "SystemModstamp":
            out[name] = format_sf_datetime(parse_sf_datetime(value)) or None
        elif name in DATE_FIELDS and value is not None:
            out[name] = datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d")
        else:
            out[name] = value
    out["attributes"] = {"type": sobject}
    return out


# --- the store ---------------------------------------------------------------------------

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS records (
    sobject TEXT NOT NULL,
    id TEXT NOT NULL PRIMARY KEY,
    fields TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_by_modified ON records (sobject, modified_ms);
CREATE TABLE IF NOT EXISTS changes (
    replay INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    header TEXT NOT NULL,
    fields TEXT NOT NULL,
    commit_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_commit ON changes (commit_ts);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS field_history (
    id TEXT NOT NULL PRIMARY KEY,
    sobject TEXT NOT NULL,
    record_id TEXT NOT NULL,
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    data_type TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS field_history_by_record ON field_history (sobject, record_id);
CREATE TABLE IF NOT EXISTS custom_fields (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    name TEXT NOT NULL,
    sf_type TEXT NOT NULL,
    UNIQUE (entity, name)
);
"""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Transaction:
    """One Salesforce transaction: its changes share transactionKey and commitTimestamp."""

    store: SandboxStore
    conn: sqlite3.Connection
    key: str
    commit_ms: int
    commit_number: int
    changed: set[str] = field(default_factory=set)
    sequence: int = 0
    changes: list[StoredChange] = field(default_factory=list)
    open: bool = True


class SandboxStore:
    """SQLite-backed state of the sandbox org (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
        retention_ms: int = DEFAULT_RETENTION_MS,
        track_owner_history: bool = True,
    ) -> None:
        self.path = Path(path)
        self.track_owner_history = track_owner_history
        if self.path.is_dir():
            raise SandboxStoreError(
                f"sandbox store path {self.path} is a directory; pass a file path like {self.path / 'sandbox.db'}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.retention_ms = retention_ms
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._changed = threading.Condition()
        self._tx_local = threading.local()
        self._init_schema()
        self.schemas = self._load_custom_fields()

    # -- connections ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (any thread)."""
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _init_schema(self) -> None:
        conn = self._conn()
        conn.executescript(_SCHEMA_SQL)
        conn.execute("BEGIN IMMEDIATE")
        try:
            seeded = conn.execute("SELECT 1 FROM records WHERE sobject = 'User' LIMIT 1").fetchone()
            if not seeded:
                self._seed_directory(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _load_custom_fields(self) -> SchemaSet:
        schemas = DEFAULT_SCHEMAS
        rows = (
            self._conn()
            .execute("SELECT entity, name, sf_type FROM custom_fields ORDER BY position")
            .fetchall()
        )
        for entity, name, sf_type in rows:
            schemas = schemas.with_custom_field(entity, name, sf_type)
        return schemas

    def add_custom_field(self, entity: str, name: str, sf_type: str) -> SchemaSet:
        """Add a custom field to an entity, as an admin does in Setup: the entity's change
        events and GetSchema answers carry it from now on (under a new schema id), and REST
        reads and writes it. Kept in the store file; a process that opened the store before
        sees it once it reopens the store. Returns the org's new schema set."""
        try:
            schemas = self.schemas.with_custom_field(entity, name, sf_type)
        except ValueError as exc:
            raise SandboxStoreError(str(exc)) from None
        self._conn().execute(
            "INSERT INTO custom_fields (entity, name, sf_type) VALUES (?, ?, ?)",
            (entity, name, sf_type),
        )
        self.schemas = schemas
        return schemas

    def _seed_directory(self, conn: sqlite3.Connection) -> None:
        rows = [("User", u.id, _user_fields(u)) for u in SEED_USERS]
        rows += [("Group", q.id, _queue_fields(q)) for q in SEED_QUEUES]
        for sobject, record_id, values in rows:
            conn.execute(
                "INSERT INTO records (sobject, id, fields, created_ms, modified_ms) VALUES (?, ?, ?, ?, ?)",
                (sobject, record_id, json.dumps(values), _SEED_CREATED_MS, _SEED_CREATED_MS),
            )
        conn.execute("INSERT OR REPLACE INTO counters VALUES ('id:005', ?)", (len(SEED_USERS),))
        conn.execute("INSERT OR REPLACE INTO counters VALUES ('id:00G', ?)", (len(SEED_QUEUES),))

    def _next_counter(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            (name,),
        ).fetchone()
        return int(row[0])

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, at_ms: int | None = None) -> Iterator[Transaction]:
        """Group writes into one Salesforce transaction: one transactionKey, sequenceNumber
        1..n in write order, one commitTimestamp (``at_ms``, default now). Pass the yielded
        object as ``transaction=`` to the writers. All or nothing: an exception rolls back."""
        conn = self._conn()
        if getattr(self._tx_local, "active", None) is not None:
            raise SandboxStoreError(
                "a sandbox transaction is already open in this thread; nest writes in it instead"
            )
        commit_ms = self._now(at_ms)
        conn.execute("BEGIN IMMEDIATE")
        tx: Transaction | None = None
        try:
            number = self._next_counter(conn, "commit")
            tx = Transaction(self, conn, _transaction_key(number), commit_ms, 10_000_000 + number)
            self._tx_local.active = tx
            yield tx
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self._tx_local.active = None
            if tx is not None:
                tx.open = False
        self._notify()

    @contextmanager
    def _write(self, transaction: Transaction | None, at_ms: int | None) -> Iterator[Transaction]:
        if transaction is None:
            with self.transaction(at_ms=at_ms) as tx:
                yield tx
            return
        if transaction.store is not self or not transaction.open:
            raise SandboxStoreError("transaction= must be an open transaction of this store")
        if at_ms is not None and at_ms != transaction.commit_ms:
            raise SandboxStoreError(
                f"at_ms={at_ms} differs from the transaction's commit time {transaction.commit_ms}; "
                "changes in one transaction share one commit timestamp"
            )
        yield transaction

    def _now(self, at_ms: int | None) -> int:
        return int(self.clock() if at_ms is None else at_ms)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _append(
        self,
        tx: Transaction,
        entity: str,
        record_ids: Sequence[str],
        change_type: str,
        body: Mapping[str, Any],
        *,
        user_id: str,
        change_origin: str = "",
        changed: Sequence[str] = (),
        nulled: Sequence[str] = (),
    ) -> StoredChange:
        tx.sequence += 1
        header = {
            "entityName": entity,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": change_origin,
            "transactionKey": tx.key,
            "sequenceNumber": tx.sequence,
            "commitTimestamp": tx.commit_ms,
            "commitNumber": tx.commit_number,
            "commitUser": user_id,
            "nulledFields": list(nulled),
            "diffFields": [],
            "changedFields": list(changed),
        }
        fields = {k: _drop_nulls(v) if isinstance(v, dict) else v for k, v in body.items()}
        fields = {k: v for k, v in fields.items() if v is not None and v != {}}
        cursor = tx.conn.execute(
            "INSERT INTO changes (entity, header, fields, commit_ts) VALUES (?, ?, ?, ?)",
            (entity, json.dumps(header), json.dumps(fields), tx.commit_ms),
        )
        change = StoredChange(int(cursor.lastrowid), entity, header, fields, tx.commit_ms)
        tx.changes.append(change)
        return change

    def _claim(self, tx: Transaction, record_id: str) -> None:
        # Salesforce publishes one event per record per transaction; the sandbox refuses the
        # second change rather than merging (nothing in the pipeline needs merged events).
        if record_id in tx.changed:
            raise SandboxStoreError(
                f"record {record_id} already changed in this transaction; use a new one"
            )
        tx.changed.add(record_id)

    # -- writers -------------------------------------------------------------------------
    def create_record(
        self,
        sobject: str,
        values: Mapping[str, Any],
        *,
        user_id: str,
        at_ms: int | None = None,
        transaction: Transaction | None = None,
        change_origin: str = "",
    ) -> str:
        """Insert a record and publish its CREATE event; returns the new 18-char id."""
        _check_entity(sobject)
        normalized = normalize_values(sobject, values, schemas=self.schemas)
        with self._write(transaction, at_ms) as tx:
            number = self._next_counter(tx.conn, f"id:{KEY_PREFIXES[sobject]}")
            record_id = sf_id(KEY_PREFIXES[sobject], number)
            self._claim(tx, record_id)
            stored = {**normalized, **self._audit(sobject, user_id, tx.commit_ms, created=True)}
            tx.conn.execute(
                "INSERT INTO records (sobject, id, fields, created_ms, modified_ms) VALUES (?, ?, ?, ?, ?)",
                (sobject, record_id, json.dumps(stored), tx.commit_ms, tx.commit_ms),
            )
            self._append(
                tx,
                sobject,
                [record_id],
                "CREATE",
                stored,
                user_id=user_id,
                change_origin=change_origin,
            )
        return record_id

    def update_record(
        self,
        sobject: str,
        record_id: str,
        values: Mapping[str, Any],
        *,
        user_id: str,
        change_origin: str = "",
        at_ms: int | None = None,
        transaction: Transaction | None = None,
    ) -> None:
        """Apply values and publish the UPDATE event (changed values only, see module doc)."""
        _check_entity(sobject)
        normalized = normalize_values(sobject, values, schemas=self.schemas)
        with self._write(transaction, at_ms) as tx:
            current = self._load_live(tx.conn, sobject, record_id)
            self._claim(tx, record_id)
            new, body, changed, nulled = _diff(current, normalized)
            self._track_owner(tx, sobject, record_id, current, new, user_id)
            audit = self._audit(sobject, user_id, tx.commit_ms, created=False)
            for name, value in audit.items():
                if current.get(name) != value or name == "LastModifiedDate":
                    body[name], new[name] = value, value
                    changed.append(name)
            tx.conn.execute(
                "UPDATE records SET fields = ?, modified_ms = ? WHERE id = ?",
                (json.dumps(new), tx.commit_ms, record_id),
            )
            self._append(
                tx,
                sobject,
                [record_id],
                "UPDATE",
                body,
                user_id=user_id,
                change_origin=change_origin,
                changed=changed,
                nulled=nulled,
            )

    def delete_record(
        self,
        sobject: str,
        record_id: str,
        *,
        user_id: str,
        at_ms: int | None = None,
        transaction: Transaction | None = None,
        change_origin: str = "",
    ) -> None:
        """Move the record to the recycle bin and publish DELETE (header only)."""
        _check_entity(sobject)
        with self._write(transaction, at_ms) as tx:
            self._load_live(tx.conn, sobject, record_id)
            self._claim(tx, record_id)
            tx.conn.execute(
                "UPDATE records SET deleted = 1, modified_ms = ? WHERE id = ?",
                (tx.commit_ms, record_id),
            )
            self._append(
                tx, sobject, [record_id], "DELETE", {}, user_id=user_id, change_origin=change_origin
            )

    def undelete_record(
        self,
        sobject: str,
        record_id: str,
        *,
        user_id: str,
        at_ms: int | None = None,
        transaction: Transaction | None = None,
        change_origin: str = "",
    ) -> None:
        """Restore a deleted record and publish UNDELETE with all its values (like CREATE)."""
        _check_entity(sobject)
        with self._write(transaction, at_ms) as tx:
            row = tx.conn.execute(
                "SELECT fields, deleted FROM records WHERE sobject = ? AND id = ?",
                (sobject, record_id),
            ).fetchone()
            if row is None or not row[1]:
                raise RecordNotFoundError(
                    f"{sobject} {record_id} is not in the recycle bin; only deleted records can be undeleted"
                )
            self._claim(tx, record_id)
            values = json.loads(row[0])
            values.update(self._audit(sobject, user_id, tx.commit_ms, created=False))
            tx.conn.execute(
                "UPDATE records SET deleted = 0, fields = ?, modified_ms = ? WHERE id = ?",
                (json.dumps(values), tx.commit_ms, record_id),
            )
            self._append(
                tx,
                sobject,
                [record_id],
                "UNDELETE",
                values,
                user_id=user_id,
                change_origin=change_origin,
            )

    def emit_gap(
        self,
        entity: str,
        record_ids: Sequence[str],
        change_type: str,
        *,
        values: Mapping[str, Any] | None = None,
        user_id: str = INTEGRATION_USER_ID,
        at_ms: int | None = None,
    ) -> StoredChange:
        """Publish a gap event (header only, body null) for records changed outside the
        normal path. ``values`` (GAP_UPDATE) are applied silently first; GAP_DELETE and
        GAP_UNDELETE move the records to or from the recycle bin. Subscribers must re-read."""
        change_type = change_type if change_type.startswith("GAP_") else f"GAP_{change_type}"
        if change_type not in GAP_TYPES:
            raise SandboxStoreError(
                f"gap change type must be one of {list(GAP_TYPES)}, got {change_type!r}"
            )
        if not record_ids:
            raise SandboxStoreError("emit_gap needs at least one record id")
        _check_entity(entity)
        if values and change_type != "GAP_UPDATE":
            raise SandboxStoreError("values= only applies to GAP_UPDATE")
        normalized = normalize_values(entity, values or {}, schemas=self.schemas)
        with self.transaction(at_ms=at_ms) as tx:
            for record_id in record_ids:
                self._apply_gap(tx, entity, record_id, change_type, normalized, user_id)
            return self._append(tx, entity, list(record_ids), change_type, {}, user_id=user_id)

    def _apply_gap(
        self,
        tx: Transaction,
        entity: str,
        record_id: str,
        change_type: str,
        values: Mapping[str, Any],
        user_id: str,
    ) -> None:
        row = tx.conn.execute(
            "SELECT fields, deleted FROM records WHERE sobject = ? AND id = ?", (entity, record_id)
        ).fetchone()
        if row is None:
            raise RecordNotFoundError(
                f"{entity} {record_id} does not exist; gap events name existing records"
            )
        deleted = {"GAP_DELETE": 1, "GAP_UNDELETE": 0}.get(change_type, row[1])
        current = json.loads(row[0])
        new, *_ = _diff(current, values)
        self._track_owner(tx, entity, record_id, current, new, user_id)
        new.update(self._audit(entity, user_id, tx.commit_ms, created=False))
        tx.conn.execute(
            "UPDATE records SET fields = ?, deleted = ?, modified_ms = ? WHERE id = ?",
            (json.dumps(new), deleted, tx.commit_ms, record_id),
        )

    def emit_overflow(
        self, entity: str, *, user_id: str = INTEGRATION_USER_ID, at_ms: int | None = None
    ) -> StoredChange:
        """Publish GAP_OVERFLOW for an entity (recordIds ["000000000000000AAA"]): re-sync it all."""
        _check_entity(entity)
        with self.transaction(at_ms=at_ms) as tx:
            return self._append(
                tx, entity, [OVERFLOW_RECORD_ID], "GAP_OVERFLOW", {}, user_id=user_id
            )

    def _track_owner(
        self,
        tx: Transaction,
        sobject: str,
        record_id: str,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        user_id: str,
    ) -> None:
        """LeadHistory rows for an owner change (see the module docstring)."""
        old, new = before.get("OwnerId"), after.get("OwnerId")
        if sobject != "Lead" or not self.track_owner_history or old == new:
            return
        rows = [(old, new, "EntityId")]
        if any(str(v or "").startswith(KEY_PREFIXES["Group"]) for v in (old, new)):
            rows.append((self._name_of(tx.conn, old), self._name_of(tx.conn, new), "Text"))
        for old_value, new_value, data_type in rows:
            number = self._next_counter(tx.conn, "id:017")
            tx.conn.execute(
                "INSERT INTO field_history (id, sobject, record_id, field, old_value, new_value, "
                "data_type, created_ms, created_by, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sf_id("017", number),
                    sobject,
                    record_id,
                    "Owner",
                    old_value,
                    new_value,
                    data_type,
                    tx.commit_ms,
                    user_id,
                    number,
                ),
            )

    @staticmethod
    def _name_of(conn: sqlite3.Connection, record_id: Any) -> str | None:
        if not record_id:
            return None
        row = conn.execute("SELECT fields FROM records WHERE id = ?", (record_id,)).fetchone()
        return json.loads(row[0]).get("Name") if row else str(record_id)

    def field_history(
        self, sobject: str, record_ids: Sequence[str], *, field: str | None = None
    ) -> list[dict[str, Any]]:
        """``<sobject>History`` rows of those records (optionally one ``Field``), oldest
        first: Id, ParentId, Field, OldValue, NewValue, DataType, CreatedDate (epoch ms),
        CreatedById."""
        _check_sobject(sobject)
        if not record_ids:
            return []
        sql = (
            "SELECT id, record_id, field, old_value, new_value, data_type, created_ms, created_by "
            f"FROM field_history WHERE sobject = ? AND record_id IN ({','.join('?' * len(record_ids))})"
        )
        params: list[Any] = [sobject, *record_ids]
        if field is not None:
            sql += " AND field = ?"
            params.append(field)
        rows = self._conn().execute(sql + " ORDER BY created_ms, position", params).fetchall()
        names = ("Id", "ParentId", "Field", "OldValue", "NewValue", "DataType", "CreatedDate")
        return [{**dict(zip(names, r[:7], strict=True)), "CreatedById": r[7]} for r in rows]

    def _audit(self, sobject: str, user_id: str, at_ms: int, *, created: bool) -> dict[str, Any]:
        names = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
        values = dict(zip(names, (at_ms, user_id, at_ms, user_id), strict=True))
        if not created:
            values = {k: v for k, v in values.items() if k.startswith("LastModified")}
        fields = _spec(sobject, self.schemas).fields
        return {k: v for k, v in values.items() if k in fields}

    def _load_live(self, conn: sqlite3.Connection, sobject: str, record_id: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT fields, deleted FROM records WHERE sobject = ? AND id = ?", (sobject, record_id)
        ).fetchone()
        if row is None:
            raise RecordNotFoundError(f"{sobject} {record_id} does not exist in the sandbox org")
        if row[1]:
            raise RecordNotFoundError(
                f"{sobject} {record_id} is deleted (in the recycle bin); undelete it first"
            )
        return json.loads(row[0])

    # -- RecordStore reads -----------------------------------------------------------------
    def get_record(
        self, sobject: str, record_id: str, *, include_deleted: bool = False
    ) -> dict[str, Any] | None:
        """The record (stored shape plus Id, IsDeleted, SystemModstamp), or None."""
        _check_sobject(sobject)
        row = (
            self._conn()
            .execute(
                "SELECT id, fields, modified_ms, deleted FROM records WHERE sobject = ? AND id = ?",
                (sobject, record_id),
            )
            .fetchone()
        )
        if row is None or (row[3] and not include_deleted):
            return None
        return _record_from_row(row)

    def query_records(
        self,
        sobject: str,
        *,
        ids: Sequence[str] | None = None,
        modified_since_ms: int | None = None,
        include_deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Records of one sobject ordered by Id, optionally by id list and/or modified at or
        after ``modified_since_ms`` (deleted ones only with ``include_deleted``, like queryAll)."""
        _check_sobject(sobject)
        sql = "SELECT id, fields, modified_ms, deleted FROM records WHERE sobject = ?"
        params: list[Any] = [sobject]
        if not include_deleted:
            sql += " AND deleted = 0"
        if modified_since_ms is not None:
            sql += " AND modified_ms >= ?"
            params.append(int(modified_since_ms))
        if ids is not None:
            if not ids:
                return []
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        rows = self._conn().execute(sql + " ORDER BY id", params).fetchall()
        return [_record_from_row(row) for row in rows]

    # -- ChangeLogSource -------------------------------------------------------------------
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


def _transaction_key(number: int) -> str:
    """A UUID-shaped transactionKey, deterministic in the store's commit sequence."""
    return str(
        uuid.UUID(bytes=hashlib.sha256(f"sandbox-transaction-{number}".encode()).digest()[:16])
    )


def _drop_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def _diff(
    current: Mapping[str, Any], values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """(new stored values, UPDATE body, changedFields, nulledFields) of applying values."""
    new = json.loads(json.dumps(current))
    body: dict[str, Any] = {}
    changed: list[str] = []
    nulled: list[str] = []
    for name, value in values.items():
        if isinstance(value, dict):
            old_parts = current.get(name) or {}
            for child, child_value in value.items():
                if old_parts.get(child) == child_value:
                    continue
                new.setdefault(name, {})[child] = child_value
                body.setdefault(name, {})[child] = child_value
                changed.append(f"{name}.{child}")
                if child_value is None:
                    nulled.append(f"{name}.{child}")
        elif current.get(name) != value:
            new[name] = value
            body[name] = value
            changed.append(name)
            if value is None:
                nulled.append(name)
    return new, body, changed, nulled


def _record_from_row(row: Sequence[Any]) -> dict[str, Any]:
    record_id, fields_json, modified_ms, deleted = row
    return {
        "Id": record_id,
        **json.loads(fields_json),
        "IsDeleted": bool(deleted),
        "SystemModstamp": modified_ms,
    }
