"""Set-based workload writes: one ``BatchWork`` per batch step and transaction.

A step reads every lead-facts row, outbox row and routing memo it needs in one query per
table (``preload``), the workload code changes them in memory, and ``flush`` writes them
back with one ``executemany`` per statement. The guards the per-row statements kept in
SQL (a first response or an assignment only moves earlier, an earlier outbound email wins,
a routing decision's SLA beats an unrouted one) are applied to the in-memory row here, with
the same comparisons.

That is safe under concurrency because the rows are locked for the transaction before they
are read: SQLite write transactions are exclusive (BEGIN IMMEDIATE); on PostgreSQL every
processing step takes the advisory locks of its leads (sorted, so two runs cannot
deadlock) and ``SELECT ... FOR UPDATE`` on their rows. The only other writer of
``lead_facts``, ``kpi-pipeline policy recompute``, updates rows with plain UPDATEs, which
wait on those row locks (and a batch's FOR UPDATE waits on theirs).

Lead isolation without a savepoint per lead: ``checkpoint`` / ``rollback`` undo one lead's
in-memory changes when its workload code fails, so the batch's writes hold only the leads
that succeeded.

The statements ``flush`` runs, and the outbox merge, are in ``batch_sql.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.batch_sql import (
    _INSERT_ROUTING,
    _INSERT_TEMPLATE,
    _SAVE_POOL,
    _UPSERT_FACTS,
    FACT_COLUMNS,
    FactsRow,
    decision_params,
    merge_outbox_marks,
    template_params,
)
from kpi_pipeline.core.canonical import canonical_value
from kpi_pipeline.core.ledger_rows import DecisionRow, TemplateRecommendation
from kpi_pipeline.core.workloads.first_touch import SOURCE_RANK, FirstResponse
from kpi_pipeline.core.workloads.lead_route import RoutingDecision
from kpi_pipeline.core.workloads.pools import PoolState
from kpi_pipeline.core.workloads.writeback_fields import dirty_names

_MISSING = object()


class BatchWork:
    """The lead facts, outbox marks, memos and decisions of one batch step, in memory
    until ``flush``. Build with ``Ledger.batch_work(conn)``."""

    def __init__(
        self,
        conn: sa.Connection,
        now: datetime,
        insert_decision: Any,
        *,
        batch_wide: bool = False,
    ) -> None:
        """``batch_wide``: one BatchWork for every step of a batch, in one transaction
        (``Ledger.one_transaction``): each lead-facts row is read once, and the rows no
        step reads back in SQL are written once, by ``finish`` at the end (``flush``)."""
        self.conn = conn
        self.now = now
        self._insert_decision_sql = insert_decision
        self._batch_wide = batch_wide
        self.facts: dict[str, FactsRow | None] = {}  # None: no row
        self._changed: set[str] = set()
        self._marks: dict[tuple[str, str], set[str]] = {}
        self._routing: dict[str, dict[str, Any]] = {}
        self._pools: dict[str, PoolState] = {}
        self._templates: dict[str, dict[str, Any]] = {}
        self._decisions: dict[str, dict[str, Any]] = {}
        self._on_stored: dict[str, list[Callable[[], None]]] = {}
        self._journal: dict[tuple[int, Any], tuple[dict[Any, Any], Any, Any]] | None = None
        self._changed_in_journal: dict[str, bool] = {}  # lead id: was it changed before

    # --- reading ------------------------------------------------------------------------

    def preload(self, lead_ids: Iterable[str]) -> None:
        """Lock and read the lead_facts rows of these leads (one query per 500 ids)."""
        ids = sorted({i for i in lead_ids if i not in self.facts})
        if not ids:
            return
        postgres = self.conn.dialect.name == "postgresql"
        if postgres:
            self.conn.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                    "FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k"
                ),
                {"keys": [f"lead_facts:{i}" for i in ids]},
            )
        for i in ids:
            self.facts[i] = None
        columns = t.lead_facts.columns
        for row in bulk.rows_where_in(self.conn, columns, columns.Id, ids, for_update=postgres):
            self.facts[row[0]] = FactsRow(zip(FACT_COLUMNS, row, strict=True))

    def row(self, lead_id: str) -> FactsRow | None:
        if lead_id not in self.facts:
            self.preload([lead_id])
        return self.facts[lead_id]

    def clock_inputs(self, lead_id: str) -> FactsRow | None:
        return self.row(lead_id)

    # --- lead facts (the same rules as the per-row statements in lead_facts.py) --------

    def _touch(self, lead_id: str) -> FactsRow | None:
        row = self.row(lead_id)
        if self._journal is not None and (id(self.facts), lead_id) not in self._journal:
            before = None if row is None else FactsRow(row)
            self._journal[(id(self.facts), lead_id)] = (self.facts, lead_id, before)
            self._changed_in_journal[lead_id] = lead_id in self._changed
        return row

    def _set(self, lead_id: str, values: Mapping[str, Any]) -> None:
        """Change the row; it is written at ``flush`` only if a value really changed (most
        calls set what the row holds already: a lead's creation and owner on every batch
        it appears in), so ``updated_at`` is the time of the last real change."""
        row = self.facts[lead_id]
        assert row is not None
        if all(row[name] == value for name, value in values.items()):
            return
        row.update(values)
        row["updated_at"] = self.now
        self._changed.add(lead_id)

    def ensure_lead_facts(
        self, lead_id: str, *, created: datetime | None, owner_id: str | None
    ) -> None:
        row = self._touch(lead_id)
        if row is None:
            self.facts[lead_id] = FactsRow(
                dict.fromkeys(FACT_COLUMNS), Id=lead_id, CreatedDate=created, OwnerId=owner_id
            )
            self.facts[lead_id]["updated_at"] = self.now
            self._changed.add(lead_id)
            return
        self._set(
            lead_id,
            {
                "CreatedDate": created if created is not None else row["CreatedDate"],
                "OwnerId": owner_id if owner_id is not None else row["OwnerId"],
            },
        )

    def set_routing_facts(self, decision: RoutingDecision, *, calendar: str | None) -> None:
        if self._touch(decision.lead_id) is not None:
            self._set(
                decision.lead_id,
                {
                    "Routing_Policy_Version__c": decision.policy_version,
                    "Routing_Rule__c": decision.rule_id,
                    "SLA_Minutes": decision.sla_minutes,
                    "SLA_Calendar": calendar,
                },
            )

    def set_sla_if_unrouted(
        self, lead_id: str, sla_minutes: float, *, calendar: str | None
    ) -> None:
        """The SLA of a lead no routing decision set one for, once: a later batch's trigger
        does not match the rules again on fields edited since (a batch holding both events
        would not have seen the edit either; ``lead_route.arrival_state``)."""
        row = self._touch(lead_id)
        if row is not None and row["Routing_Rule__c"] is None and row["SLA_Minutes"] is None:
            self._set(lead_id, {"SLA_Minutes": sla_minutes, "SLA_Calendar": calendar})

    def set_clocks(
        self, lead_id: str, *, due_at: datetime | None, business_minutes: float | None
    ) -> None:
        if self._touch(lead_id) is not None:
            self._set(
                lead_id,
                {
                    "SLA_Due_At": due_at,
                    "Time_to_First_Response_Business_Minutes__c": business_minutes,
                },
            )

    def set_assignment(self, lead_id: str, assigned_at: datetime, latency_minutes: float) -> bool:
        """First user-owner time: only ever moves earlier."""
        row = self._touch(lead_id)
        if row is None:
            return False
        stored = row["Owner_Assigned_At__c"]
        if stored is not None and not stored > assigned_at:
            return False
        self._set(
            lead_id,
            {"Owner_Assigned_At__c": assigned_at, "Assignment_Latency_Minutes__c": latency_minutes},
        )
        return True

    def improve_first_response(self, lead_id: str, fr: FirstResponse) -> bool:
        """Only when the stored first response is empty or sorts strictly after ``fr`` by
        (at, source rank, record id)."""
        row = self._touch(lead_id)
        if row is None:
            return False
        rank = SOURCE_RANK[fr.source]
        at = row["First_Response_At__c"]
        if at is not None and (at, row["first_response_rank"], row["first_response_record_id"]) <= (
            fr.at,
            rank,
            fr.record_id,
        ):
            return False
        self._set(
            lead_id,
            {
                "First_Response_At__c": fr.at,
                "First_Response_User__c": fr.user_id,
                "First_Response_Source__c": fr.source,
                "Time_to_First_Response__c": fr.minutes,
                "first_response_rank": rank,
                "first_response_record_id": fr.record_id,
            },
        )
        return True

    def set_template_recommended(self, lead_id: str, template_id: str) -> None:
        row = self._touch(lead_id)
        if row is not None and row["Template_Recommended__c"] is None:
            self._set(lead_id, {"Template_Recommended__c": template_id})

    def set_template_applied(
        self, lead_id: str, template_id: str | None, *, at: datetime, record_id: str
    ) -> bool:
        """Template of the lead's first outbound email; only an earlier email replaces it."""
        row = self._touch(lead_id)
        if row is None:
            return False
        stored_at = row["template_applied_at"]
        if stored_at is not None and (stored_at, row["template_applied_record_id"]) <= (
            at,
            record_id,
        ):
            return False
        self._set(
            lead_id,
            {
                "Template_Applied__c": template_id,
                "template_applied_at": at,
                "template_applied_record_id": record_id,
            },
        )
        return True

    # --- outbox, memos, decisions -------------------------------------------------------

    def mark_dirty(self, sobject: str, record_id: str, names: Iterable[str]) -> None:
        """Fields to write back, merged per record until ``flush``."""
        wanted = dirty_names(sobject, names)
        if wanted:
            key = (sobject, record_id)
            self._remember(self._marks, key)
            self._marks[key] = self._marks.get(key, set()) | set(wanted)

    def insert_routing_decision(self, decision: RoutingDecision) -> bool:
        """Memoize a decision; False when this batch memoized one for the lead already (the
        caller read the stored memo under the pool locks; ``flush`` still keeps a stored
        one: ON CONFLICT DO NOTHING)."""
        if decision.lead_id in self._routing:
            return False
        self._remember(self._routing, decision.lead_id)
        self._routing[decision.lead_id] = {
            "lead_id": decision.lead_id,
            "decision": canonical_value(decision.to_json()),
            "decided_at": decision.decided_at,
            "policy_version": decision.policy_version,
        }
        return True

    def save_pool_state(self, state: PoolState) -> None:
        self._remember(self._pools, state.pool_id)
        self._pools[state.pool_id] = state

    def insert_template_recommendation(self, recommendation: TemplateRecommendation) -> None:
        """Inserted at ``flush``; the first recommendation of a lead wins."""
        self._remember(self._templates, recommendation.lead_id)
        self._templates.setdefault(recommendation.lead_id, template_params(recommendation))

    def insert_decision(
        self, decision: DecisionRow, on_stored: Callable[[], None] | None = None
    ) -> None:
        """A decision, inserted at ``flush`` once per id; ``on_stored`` runs then if the
        ledger did not hold this decision id before."""
        key = decision.id
        self._remember(self._decisions, key)
        self._decisions.setdefault(key, decision_params(decision))
        if on_stored is not None:
            self._remember(self._on_stored, key)
            self._on_stored[key] = [*self._on_stored.get(key, []), on_stored]

    # --- one lead's isolation -----------------------------------------------------------

    def _remember(self, table: dict[Any, Any], key: Any) -> None:
        """Keep the value ``table[key]`` had before the current lead's work changed it."""
        if self._journal is not None and (id(table), key) not in self._journal:
            self._journal[(id(table), key)] = (table, key, table.get(key, _MISSING))

    def checkpoint(self) -> None:
        """Start one lead's work: what it changes can be undone by ``rollback``."""
        self._journal = {}
        self._changed_in_journal = {}

    def rollback(self) -> None:
        """Undo everything since ``checkpoint``."""
        assert self._journal is not None, "rollback without checkpoint"
        for table, key, before in self._journal.values():
            if before is _MISSING:
                table.pop(key, None)
            else:
                table[key] = before
        for lead_id, was_changed in self._changed_in_journal.items():
            if was_changed:
                self._changed.add(lead_id)
            else:
                self._changed.discard(lead_id)
        self._journal = None

    def release(self) -> None:
        self._journal = None

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything in bulk: one ``executemany`` per statement.

        A batch-wide BatchWork (``Ledger.one_transaction``) writes here only what a later
        step of the batch reads back in SQL, the routing memo (and the pools with it); the
        rest waits for ``finish`` at the end of the batch: each lead-facts row and outbox
        row is then written once per batch, not once per step."""
        self._flush_routing()
        if not self._batch_wide:
            self.finish()

    def finish(self) -> None:
        """Write the lead facts, template recommendations, decisions and outbox marks."""
        changed = sorted(i for i in self._changed if self.facts.get(i) is not None)
        if changed:
            bulk.executemany(self.conn, _UPSERT_FACTS, [self.facts[i] for i in changed])  # type: ignore[misc]
        if self._templates:
            bulk.executemany(
                self.conn, _INSERT_TEMPLATE, [self._templates[k] for k in sorted(self._templates)]
            )
        self._flush_decisions()
        self._flush_marks()
        self._changed.clear()
        self._marks, self._templates, self._decisions, self._on_stored = {}, {}, {}, {}

    def _flush_routing(self) -> None:
        if self._routing:
            bulk.executemany(
                self.conn, _INSERT_ROUTING, [self._routing[k] for k in sorted(self._routing)]
            )
        for pool_id in sorted(self._pools):
            pool = self._pools[pool_id]
            self.conn.execute(
                _SAVE_POOL,
                {
                    "p_pool_id": pool.pool_id,
                    "p_pointer": pool.pointer,
                    "p_day": pool.day,
                    "p_assigned_today": canonical_value(pool.assigned_today),
                    "p_state": canonical_value(pool.to_json()),
                    "p_updated_at": self.now,
                },
            )
        self._routing, self._pools = {}, {}

    def _flush_decisions(self) -> None:
        if not self._decisions:
            return
        ids = sorted(self._decisions)
        known: set[str] = set()
        if self._on_stored:  # only who asks needs to know which ones are new
            c = t.decisions.c
            known.update(row[0] for row in bulk.rows_where_in(self.conn, [c.id], c.id, ids))
        bulk.executemany(self.conn, self._insert_decision_sql, [self._decisions[i] for i in ids])
        for decision_id, callbacks in sorted(self._on_stored.items()):
            if decision_id not in known:
                for callback in callbacks:
                    callback()

    def _flush_marks(self) -> None:
        """Insert new outbox rows, widen existing ones (the rules of ``mark_dirty``).

        A row another writer (``policy recompute``, which takes no batch lock) inserts between
        our read and our insert makes the insert do nothing (ON CONFLICT); the keys we tried to
        insert are then merged again, now as existing rows, so no mark is lost."""
        inserted = merge_outbox_marks(self.conn, self._marks, sorted(self._marks), self.now)
        if inserted:
            merge_outbox_marks(self.conn, self._marks, inserted, self.now)
