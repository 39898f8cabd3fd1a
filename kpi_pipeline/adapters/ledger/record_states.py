"""Record states in the ledger (mixed into ``Ledger``): each Salesforce record's state folded
from its change events (``RecordState``), read under the batch's locks for the merge, read by
key for the workload steps, written back in bulk, and the email -> activity index kept in step
with the emails' ``ActivityId``.

The reads go through ``bulk.rows_where_in`` (the driver's cursor on SQLite): every record
of every batch is read here, and SQLAlchemy's execution and row processing cost more than
the query."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import pairs_where_in, text_insert
from kpi_pipeline.core.workloads.records import RecordState

RecordKey = tuple[str, str]  # (sobject, id)
EMAIL = "EmailMessage"


class RecordStatesMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def _lock_keys(self, conn: sa.Connection, keys: Iterable[str]) -> None:
        """Serialise read-modify-write of the same keys across concurrent runs.

        SQLite write transactions are already exclusive (BEGIN IMMEDIATE); PostgreSQL takes
        transaction-scoped advisory locks, in sorted order so two runs cannot deadlock.
        """
        if conn.dialect.name != "postgresql":
            return
        ordered = sorted(set(keys))
        if ordered:
            conn.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                    "FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k"
                ),
                {"keys": ordered},
            )

    def load_records_for_update(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        wanted = sorted(set(keys))
        self._lock_keys(conn, (f"record:{s}:{i}" for s, i in wanted))
        return self._load_records(conn, wanted)

    @staticmethod
    def _load_records(
        conn: sa.Connection, keys: Sequence[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        found: dict[RecordKey, RecordState] = {}
        by_sobject: dict[str, list[str]] = {}
        for sobject, record_id in keys:
            by_sobject.setdefault(sobject, []).append(record_id)
        c = t.records.c
        for sobject, ids in by_sobject.items():
            rows = bulk.rows_where_in(conn, (c.id, c.state), c.id, ids, equal=(c.sobject, sobject))
            for record_id, state in rows:
                found[(sobject, record_id)] = RecordState.from_json(state)
        return found

    def save_records(self, conn: sa.Connection, states: Iterable[RecordState]) -> None:
        states_list = list(states)
        rows = [
            {
                "sobject": s.sobject,
                "id": s.record_id,
                "state": s.to_json(),  # stored as parsed JSON; key order is irrelevant
                "updated_at": self._now(),
            }
            for s in states_list
        ]
        if rows:
            bulk.executemany(conn, _SAVE_RECORD, rows)
            self._save_email_links(conn, (s for s in states_list if s.sobject == EMAIL))

    @staticmethod
    def _save_email_links(conn: sa.Connection, emails: Iterable[RecordState]) -> None:
        """Keep ``email_activity_links`` in step with the emails' ``ActivityId``."""
        linked, unlinked = [], []
        for email in emails:
            activity_id = email.fields.get("ActivityId")
            if isinstance(activity_id, str) and activity_id:
                linked.append({"email_id": email.record_id, "activity_id": activity_id})
            else:
                unlinked.append(email.record_id)
        if linked:
            bulk.executemany(conn, _SAVE_EMAIL_LINK, linked)
        for start in range(0, len(unlinked), 500):
            c = t.email_activity_links.c
            conn.execute(
                t.email_activity_links.delete().where(c.email_id.in_(unlinked[start : start + 500]))
            )

    def emails_linked_to(self, conn: sa.Connection, activity_ids: Iterable[str]) -> dict[str, str]:
        """{email id: activity id} of the stored emails whose ActivityId is one of these."""
        c = t.email_activity_links.c
        return pairs_where_in(conn, (c.email_id, c.activity_id), c.activity_id, activity_ids)

    def record(self, sobject: str, record_id: str) -> RecordState | None:
        with self.engine.connect() as conn:
            return self._load_records(conn, [(sobject, record_id)]).get((sobject, record_id))

    def records(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        return self._load_records(conn, sorted(set(keys)))


def excluded(*columns: str) -> dict[str, str]:
    return {c: f'excluded."{c}"' for c in columns}


_SAVE_RECORD = text_insert(
    t.records,
    ["sobject", "id", "state", "updated_at"],
    ["sobject", "id"],
    excluded("state", "updated_at"),
)
_SAVE_EMAIL_LINK = text_insert(
    t.email_activity_links,
    ["email_id", "activity_id"],
    ["email_id"],
    excluded("activity_id"),
)
