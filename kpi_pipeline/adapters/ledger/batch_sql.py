"""The statements a batch step's ``BatchWork`` flushes with, and the outbox merge it runs.

Typed text upserts (``sql.text_insert``: compiled once, written in bulk through
``bulk.executemany``), the lead-facts row as ``BatchWork`` holds it, the bind parameters of
a decision and of a template recommendation, and ``merge_outbox_marks``: the rules of
``Ledger.mark_dirty`` for many records at once, against the rows as they are in the
transaction (locked on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.outbox import CLAIMED, PENDING
from kpi_pipeline.adapters.ledger.sql import field_params, text_insert
from kpi_pipeline.core.canonical import canonical_value
from kpi_pipeline.core.ledger_rows import DecisionRow, TemplateRecommendation

FACT_COLUMNS: tuple[str, ...] = tuple(c.name for c in t.lead_facts.columns)


class FactsRow(dict[str, Any]):
    """One lead_facts row as a dict, read by attribute like a result row."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _upsert_facts() -> sa.TextClause:
    return text_insert(
        t.lead_facts,
        list(FACT_COLUMNS),
        ["Id"],
        {c: f'excluded."{c}"' for c in FACT_COLUMNS if c != "Id"},
    )


_UPSERT_FACTS = _upsert_facts()
_INSERT_ROUTING = text_insert(
    t.routing_decisions, ["lead_id", "decision", "decided_at", "policy_version"], ["lead_id"]
)
_INSERT_TEMPLATE = text_insert(
    t.template_recommendations,
    ["lead_id", "template_id", "model", "decided_at", "detail"],
    ["lead_id"],
)
_INSERT_OUTBOX = text_insert(
    t.sf_outbox,
    [
        "sobject",
        "record_id",
        "dirty",
        "generation",
        "status",
        "attempts",
        "created_at",
        "dirtied_at",
        "confirmed",
    ],
    ["sobject", "record_id"],
)
_UPDATE_OUTBOX = (
    t.sf_outbox.update()
    .where(t.sf_outbox.c.id == sa.bindparam("p_id"))
    .values(
        dirty=sa.bindparam("p_dirty", type_=sa.JSON),
        generation=t.sf_outbox.c.generation + 1,
        status=sa.bindparam("p_status"),
        dirtied_at=sa.bindparam("p_dirtied_at", type_=t.UTCDateTime),
    )
)
_SAVE_POOL = (
    t.pool_state.update()
    .where(t.pool_state.c.pool_id == sa.bindparam("p_pool_id"))
    .values(
        pointer=sa.bindparam("p_pointer"),
        day=sa.bindparam("p_day"),
        assigned_today=sa.bindparam("p_assigned_today", type_=sa.JSON),
        state=sa.bindparam("p_state", type_=sa.JSON),
        updated_at=sa.bindparam("p_updated_at", type_=t.UTCDateTime),
    )
)


def decision_params(decision: DecisionRow) -> dict[str, Any]:
    """The bind parameters of a decision's insert."""
    return {**field_params(decision), "replay_ids": list(decision.replay_ids)}


def template_params(recommendation: TemplateRecommendation) -> dict[str, Any]:
    """The bind parameters of a template recommendation's insert."""
    return {**field_params(recommendation), "detail": canonical_value(dict(recommendation.detail))}


class _OutboxRow(NamedTuple):
    """What the outbox merge reads of an existing row."""

    id: int
    record_id: str
    dirty: list[str]
    status: str
    dirtied_at: datetime


_OUTBOX_ROW_COLUMNS = tuple(t.sf_outbox.c[name] for name in _OutboxRow._fields)


def merge_outbox_marks(
    conn: sa.Connection,
    marks: Mapping[tuple[str, str], set[str]],
    keys: list[tuple[str, str]],
    now: datetime,
) -> list[tuple[str, str]]:
    """Insert new outbox rows for ``keys`` or widen the existing ones with ``marks`` (the
    rules of ``Ledger.mark_dirty``), in one pass; returns the keys it inserted rows for."""
    if not keys:
        return []
    c = t.sf_outbox.c
    existing: dict[tuple[str, str], _OutboxRow] = {}
    by_sobject: dict[str, list[str]] = {}
    for sobject, record_id in keys:
        by_sobject.setdefault(sobject, []).append(record_id)
    postgres = conn.dialect.name == "postgresql"
    for sobject, ids in by_sobject.items():
        rows = bulk.rows_where_in(
            conn,
            _OUTBOX_ROW_COLUMNS,
            c.record_id,
            ids,
            equal=(c.sobject, sobject),
            order_by=(c.id,) if postgres else (),
            for_update=postgres,
        )
        for row in map(_OutboxRow._make, rows):
            existing[(sobject, row.record_id)] = row
    inserts, updates = [], []
    for key in keys:
        wanted = sorted(marks[key])
        row = existing.get(key)
        if row is None:
            inserts.append(
                {
                    "sobject": key[0],
                    "record_id": key[1],
                    "dirty": wanted,
                    "generation": 1,
                    "status": PENDING,
                    "attempts": 0,
                    "created_at": now,
                    "dirtied_at": now,
                    "confirmed": {},
                }
            )
            continue
        dirty = sorted(set(row.dirty) | set(wanted))
        if row.status == PENDING and dirty == sorted(row.dirty):
            continue  # already waiting; the drain reads the newest values anyway
        updates.append(
            {
                "p_id": row.id,
                "p_dirty": dirty,
                # A claimed row keeps its claim: the moved generation makes its
                # confirmation leave it pending, so the value changed meanwhile goes out.
                "p_status": CLAIMED if row.status == CLAIMED else PENDING,
                "p_dirtied_at": row.dirtied_at if row.status in (PENDING, CLAIMED) else now,
            }
        )
    if inserts:
        bulk.executemany(conn, _INSERT_OUTBOX, inserts)
    if updates:
        conn.execute(_UPDATE_OUTBOX, updates)
    return [(row["sobject"], row["record_id"]) for row in inserts]
