"""Writing records: each write appends the change event Salesforce would publish for it.

``RecordWrites`` creates, updates, deletes and undeletes records and emits gap and overflow
events, in the SQLite transaction that changes the records, so the records and the change
log never disagree. An UPDATE carries only the changed values; ``changedFields`` always
includes ``LastModifiedDate``; fields set to null are listed in ``nulledFields``. Lead owner
changes also write ``LeadHistory`` rows (``track_owner_history``, see the package docstring)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Required, TypedDict, Unpack

from kpi_pipeline.core.events import OVERFLOW_RECORD_ID
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.store.database import StoreDatabase, Transaction
from kpi_pipeline.sandbox.store.directory import INTEGRATION_USER_ID, KEY_PREFIXES, sf_id
from kpi_pipeline.sandbox.store.errors import RecordNotFoundError, SandboxStoreError
from kpi_pipeline.sandbox.store.fields import check_entity, entity_spec, normalize_values

GAP_TYPES = ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE")


class WriteOptions(TypedDict, total=False):
    """The keyword arguments every writer takes: who writes (``user_id``, required), the
    event's ``change_origin`` header, and when: at ``at_ms`` (default now) or inside an open
    ``transaction`` (``store.transaction()``, whose commit time ``at_ms`` must then match)."""

    user_id: Required[str]
    change_origin: str
    at_ms: int | None
    transaction: Transaction | None


class RecordWrites(StoreDatabase):
    """The store's writers (see the module docstring)."""

    def _append(
        self,
        tx: Transaction,
        entity: str,
        record_ids: Sequence[str],
        change_type: str,
        body: Mapping[str, Any],
        write: WriteOptions,
        *,
        changed: Sequence[str] = (),
        nulled: Sequence[str] = (),
    ) -> StoredChange:
        tx.sequence += 1
        header = {
            "entityName": entity,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": write.get("change_origin", ""),
            "transactionKey": tx.key,
            "sequenceNumber": tx.sequence,
            "commitTimestamp": tx.commit_ms,
            "commitNumber": tx.commit_number,
            "commitUser": write["user_id"],
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

    @contextmanager
    def _writing(self, write: WriteOptions) -> Iterator[Transaction]:
        """The transaction a writer writes in, once its options are checked as a signature
        would check them (a misspelt option must not be ignored)."""
        # Checked here: TypedDict keyword arguments are not checked at run time.
        known = list(WriteOptions.__annotations__)
        if not write.keys() <= set(known) or "user_id" not in write:
            raise TypeError(
                f"a writer takes the options {known} (user_id required), got {sorted(write)}"
            )
        with self._write(write.get("transaction"), write.get("at_ms")) as tx:
            yield tx

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
        self, sobject: str, values: Mapping[str, Any], **write: Unpack[WriteOptions]
    ) -> str:
        """Insert a record and publish its CREATE event; returns the new 18-char id."""
        check_entity(sobject)
        normalized = normalize_values(sobject, values, schemas=self.schemas)
        with self._writing(write) as tx:
            number = self._next_counter(tx.conn, f"id:{KEY_PREFIXES[sobject]}")
            record_id = sf_id(KEY_PREFIXES[sobject], number)
            self._claim(tx, record_id)
            audit = self._audit(sobject, write["user_id"], tx.commit_ms, created=True)
            stored = {**normalized, **audit}
            tx.conn.execute(
                "INSERT INTO records (sobject, id, fields, created_ms, modified_ms) VALUES (?, ?, ?, ?, ?)",
                (sobject, record_id, json.dumps(stored), tx.commit_ms, tx.commit_ms),
            )
            self._append(tx, sobject, [record_id], "CREATE", stored, write)
        return record_id

    def update_record(
        self, sobject: str, record_id: str, values: Mapping[str, Any], **write: Unpack[WriteOptions]
    ) -> None:
        """Apply values and publish the UPDATE event (changed values only, see module doc)."""
        check_entity(sobject)
        normalized = normalize_values(sobject, values, schemas=self.schemas)
        with self._writing(write) as tx:
            current = self._load_live(tx.conn, sobject, record_id)
            self._claim(tx, record_id)
            new, body, changed, nulled = _diff(current, normalized)
            self._track_owner(tx, sobject, record_id, current, new, write["user_id"])
            audit = self._audit(sobject, write["user_id"], tx.commit_ms, created=False)
            for name, value in audit.items():
                if current.get(name) != value or name == "LastModifiedDate":
                    body[name], new[name] = value, value
                    changed.append(name)
            tx.conn.execute(
                "UPDATE records SET fields = ?, modified_ms = ? WHERE id = ?",
                (json.dumps(new), tx.commit_ms, record_id),
            )
            self._append(
                tx, sobject, [record_id], "UPDATE", body, write, changed=changed, nulled=nulled
            )

    def delete_record(self, sobject: str, record_id: str, **write: Unpack[WriteOptions]) -> None:
        """Move the record to the recycle bin and publish DELETE (header only)."""
        check_entity(sobject)
        with self._writing(write) as tx:
            self._load_live(tx.conn, sobject, record_id)
            self._claim(tx, record_id)
            tx.conn.execute(
                "UPDATE records SET deleted = 1, modified_ms = ? WHERE id = ?",
                (tx.commit_ms, record_id),
            )
            self._append(tx, sobject, [record_id], "DELETE", {}, write)

    def undelete_record(self, sobject: str, record_id: str, **write: Unpack[WriteOptions]) -> None:
        """Restore a deleted record and publish UNDELETE with all its values (like CREATE)."""
        check_entity(sobject)
        with self._writing(write) as tx:
            stored = self._stored(tx.conn, sobject, record_id)
            if stored is None or not stored[1]:
                raise RecordNotFoundError(
                    f"{sobject} {record_id} is not in the recycle bin; only deleted records can be undeleted"
                )
            self._claim(tx, record_id)
            values = stored[0]
            values.update(self._audit(sobject, write["user_id"], tx.commit_ms, created=False))
            tx.conn.execute(
                "UPDATE records SET deleted = 0, fields = ?, modified_ms = ? WHERE id = ?",
                (json.dumps(values), tx.commit_ms, record_id),
            )
            self._append(tx, sobject, [record_id], "UNDELETE", values, write)

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
        check_entity(entity)
        if values and change_type != "GAP_UPDATE":
            raise SandboxStoreError("values= only applies to GAP_UPDATE")
        normalized = normalize_values(entity, values or {}, schemas=self.schemas)
        with self.transaction(at_ms=at_ms) as tx:
            for record_id in record_ids:
                self._apply_gap(tx, entity, record_id, change_type, normalized, user_id)
            author = WriteOptions(user_id=user_id)
            return self._append(tx, entity, list(record_ids), change_type, {}, author)

    def _apply_gap(
        self,
        tx: Transaction,
        entity: str,
        record_id: str,
        change_type: str,
        values: Mapping[str, Any],
        user_id: str,
    ) -> None:
        stored = self._stored(tx.conn, entity, record_id)
        if stored is None:
            raise RecordNotFoundError(
                f"{entity} {record_id} does not exist; gap events name existing records"
            )
        current, was_deleted = stored
        deleted = {"GAP_DELETE": 1, "GAP_UNDELETE": 0}.get(change_type, int(was_deleted))
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
        check_entity(entity)
        with self.transaction(at_ms=at_ms) as tx:
            author = WriteOptions(user_id=user_id)
            return self._append(tx, entity, [OVERFLOW_RECORD_ID], "GAP_OVERFLOW", {}, author)

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

    def _audit(self, sobject: str, user_id: str, at_ms: int, *, created: bool) -> dict[str, Any]:
        names = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
        values = dict(zip(names, (at_ms, user_id, at_ms, user_id), strict=True))
        if not created:
            values = {k: v for k, v in values.items() if k.startswith("LastModified")}
        fields = entity_spec(sobject, self.schemas).fields
        return {k: v for k, v in values.items() if k in fields}

    @staticmethod
    def _stored(
        conn: sqlite3.Connection, sobject: str, record_id: str
    ) -> tuple[dict[str, Any], bool] | None:
        """The record's stored fields and whether it is in the recycle bin (None: no record)."""
        row = conn.execute(
            "SELECT fields, deleted FROM records WHERE sobject = ? AND id = ?", (sobject, record_id)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), bool(row[1]))

    def _load_live(self, conn: sqlite3.Connection, sobject: str, record_id: str) -> dict[str, Any]:
        stored = self._stored(conn, sobject, record_id)
        if stored is None:
            raise RecordNotFoundError(f"{sobject} {record_id} does not exist in the sandbox org")
        if stored[1]:
            raise RecordNotFoundError(
                f"{sobject} {record_id} is deleted (in the recycle bin); undelete it first"
            )
        return stored[0]


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
