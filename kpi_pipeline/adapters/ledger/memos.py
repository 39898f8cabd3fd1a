"""Workload memos in the ledger (mixed into ``Ledger``): response candidates, the routing memo
and pool state (with their locks), template recommendations and the decisions behind the
flywheel records. Every insert is keyed by what it is about, so re-delivery adds nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.batch_sql import decision_params
from kpi_pipeline.adapters.ledger.record_states import excluded
from kpi_pipeline.adapters.ledger.sql import (
    insert_ignore,
    pairs_where_in,
    text_insert,
)
from kpi_pipeline.core.canonical import canonical_value
from kpi_pipeline.core.ledger_rows import DecisionRow
from kpi_pipeline.core.workloads.first_touch import SOURCE_RANK, ResponseCandidate
from kpi_pipeline.core.workloads.lead_route import RoutingDecision
from kpi_pipeline.core.workloads.pools import PoolState
from kpi_pipeline.core.workloads.records import RecordState


class WorkloadMemosMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def read(self) -> AbstractContextManager[sa.Connection]: ...  # provided by Ledger

    def put_candidate(self, conn: sa.Connection, candidate: ResponseCandidate) -> None:
        conn.execute(
            _PUT_CANDIDATE,
            {
                "record_id": candidate.record_id,
                "lead_id": candidate.lead_id,
                "at": candidate.at,
                "source": candidate.source,
                "rank": SOURCE_RANK[candidate.source],
                "user_id": candidate.user_id,
            },
        )

    def put_candidates(self, conn: sa.Connection, candidates: Sequence[ResponseCandidate]) -> None:
        """``put_candidate`` for many, in one ``executemany``."""
        if candidates:
            bulk.executemany(
                conn,
                _PUT_CANDIDATE,
                [
                    {
                        "record_id": c.record_id,
                        "lead_id": c.lead_id,
                        "at": c.at,
                        "source": c.source,
                        "rank": SOURCE_RANK[c.source],
                        "user_id": c.user_id,
                    }
                    for c in candidates
                ],
            )

    def drop_candidates(self, conn: sa.Connection, record_ids: Sequence[str]) -> None:
        """``drop_candidate`` for many, 500 ids a statement."""
        ids = sorted(set(record_ids))
        c = t.response_candidates.c
        for start in range(0, len(ids), 500):
            conn.execute(
                t.response_candidates.delete().where(c.record_id.in_(ids[start : start + 500]))
            )

    def drop_candidate(self, conn: sa.Connection, record_id: str) -> None:
        """A record that no longer qualifies (un-completed, deleted); settled answers stay."""
        conn.execute(
            t.response_candidates.delete().where(t.response_candidates.c.record_id == record_id)
        )

    def candidates_for(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, list[ResponseCandidate]]:
        found: dict[str, list[ResponseCandidate]] = {}
        c = t.response_candidates.c
        rows = bulk.rows_where_in(
            conn,
            (c.lead_id, c.at, c.source, c.record_id, c.user_id),
            c.lead_id,
            lead_ids,
            order_by=(c.lead_id, c.at, c.rank, c.record_id),
        )
        for row in rows:
            found.setdefault(row[0], []).append(ResponseCandidate(*row))
        return found

    # --- routing ------------------------------------------------------------------------

    def routed_leads(self) -> list[tuple[RecordState, RoutingDecision]]:
        """Every lead the pipeline routed, with its stored decision, in decision order
        (``kpi-pipeline policy simulate --ledger-url``: what-if over real history)."""
        with self.read() as conn:
            ids = list(
                conn.execute(
                    sa.select(t.routing_decisions.c.lead_id).order_by(
                        t.routing_decisions.c.decided_at, t.routing_decisions.c.lead_id
                    )
                ).scalars()
            )
            decisions = self.routing_decisions(conn, ids)
            states = self.records(conn, [("Lead", lead_id) for lead_id in ids])
        return [(states[("Lead", i)], decisions[i]) for i in ids if ("Lead", i) in states]

    def routing_decisions(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, RoutingDecision]:
        c = t.routing_decisions.c
        stored = pairs_where_in(conn, (c.lead_id, c.decision), c.lead_id, lead_ids)
        return {
            lead_id: RoutingDecision.from_json(decision) for lead_id, decision in stored.items()
        }

    def lock_pools(self, conn: sa.Connection, pool_ids: Iterable[str]) -> dict[str, PoolState]:
        """Pool states, locked for this transaction (rows created at pointer 0 when new).

        PostgreSQL: ``SELECT ... FOR UPDATE`` in pool id order; SQLite: the IMMEDIATE write
        transaction already excludes other writers. Either way two concurrent runs cannot
        both advance a pointer from the same position.
        """
        ids = sorted(set(pool_ids))
        if not ids:
            return {}
        conn.execute(
            insert_ignore(conn, t.pool_state, ["pool_id"]),
            [
                {
                    "pool_id": p,
                    "pointer": 0,
                    "day": "",
                    "assigned_today": {},
                    "updated_at": self._now(),
                }
                for p in ids
            ],
        )
        query = (
            sa.select(t.pool_state)
            .where(t.pool_state.c.pool_id.in_(ids))
            .order_by(t.pool_state.c.pool_id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return {
            row.pool_id: PoolState(
                row.pool_id, row.pointer, row.day or "", dict(row.assigned_today or {})
            )
            for row in conn.execute(query)
        }

    def save_pool_state(self, conn: sa.Connection, state: PoolState) -> None:
        conn.execute(
            t.pool_state.update()
            .where(t.pool_state.c.pool_id == state.pool_id)
            .values(
                pointer=state.pointer,
                day=state.day,
                assigned_today=canonical_value(state.assigned_today),
                state=canonical_value(state.to_json()),
                updated_at=self._now(),
            )
        )

    def pool_states(self) -> dict[str, PoolState]:
        with self.engine.connect() as conn:
            return {
                row.pool_id: PoolState(
                    row.pool_id, row.pointer, row.day or "", dict(row.assigned_today or {})
                )
                for row in conn.execute(sa.select(t.pool_state))
            }

    def insert_routing_decision(self, conn: sa.Connection, decision: RoutingDecision) -> bool:
        """Memoize a lead's decision; False when the lead was already decided (keep that one)."""
        result = conn.execute(
            insert_ignore(conn, t.routing_decisions, ["lead_id"]).values(
                lead_id=decision.lead_id,
                decision=canonical_value(decision.to_json()),
                decided_at=decision.decided_at,
                policy_version=decision.policy_version,
            )
        )
        return result.rowcount == 1

    # --- templates ----------------------------------------------------------------------

    def template_recommendations(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, str]:
        c = t.template_recommendations.c
        return pairs_where_in(conn, (c.lead_id, c.template_id), c.lead_id, lead_ids)

    # --- decisions ----------------------------------------------------------------------

    def insert_decision(self, conn: sa.Connection, decision: DecisionRow) -> bool:
        """Insert once per deterministic id (re-delivery adds nothing)."""
        result = conn.execute(_INSERT_DECISION, decision_params(decision))
        return result.rowcount == 1

    def decisions_between(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        workload: str | None = None,
    ) -> list[DecisionRow]:
        """Decisions with start <= decided_at < end, ordered by (decided_at, workload, id)."""
        c = t.decisions.c
        query = sa.select(t.decisions)
        if start is not None:
            query = query.where(c.decided_at >= start)
        if end is not None:
            query = query.where(c.decided_at < end)
        if workload is not None:
            query = query.where(c.workload == workload)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(c.decided_at, c.workload, c.id)).all()
        # Built by position, not ``from_row``: replay reads every decision here, and looking
        # the dataclass's fields up again for each row cost 2 % of it (bench/RESULTS.md).
        return [DecisionRow(*row[:_REPLAY_IDS], list(row[_REPLAY_IDS] or [])) for row in rows]


# ``DecisionRow``'s fields are the decisions table's columns, in the same order (a test
# checks); the last, replay_ids, is copied into a list.
_REPLAY_IDS = len(t.decisions.columns) - 1
_PUT_CANDIDATE = text_insert(
    t.response_candidates,
    ["record_id", "lead_id", "at", "source", "rank", "user_id"],
    ["record_id"],
    excluded("lead_id", "at", "source", "rank", "user_id"),
)
_INSERT_DECISION = text_insert(
    t.decisions,
    [
        "id",
        "workload",
        "lead_id",
        "decided_at",
        "policy_version",
        "rule_id",
        "model",
        "request",
        "response",
        "replay_ids",
    ],
    ["id"],
)
