"""Workload state in the ledger: records, lead facts, response candidates, routing memo,
pool state, template recommendations and decisions (mixed into ``Ledger``).

Methods taking ``conn`` run inside the caller's transaction (``Ledger.write()``), so one
batch step is one transaction. The guards that keep effects idempotent and monotone live
in the SQL itself (see ``improve_first_response``), so they also hold between two
concurrent runs, not just within one process. The processing steps write through
``batch_work`` instead (``batch.py``): the same guards applied in memory to rows locked
for the transaction, then one bulk statement per table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import bulk, facts_frame
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.batch import BatchWork, decision_params
from kpi_pipeline.adapters.ledger.schema import UTCDateTime
from kpi_pipeline.adapters.ledger.sql import canonical, insert_ignore, text_insert
from kpi_pipeline.core.kpis.lead_facts import lead_facts_columns
from kpi_pipeline.core.ledger_rows import DecisionRow
from kpi_pipeline.core.workloads.first_touch import SOURCE_RANK, FirstResponse, ResponseCandidate
from kpi_pipeline.core.workloads.lead_route import RoutingDecision
from kpi_pipeline.core.workloads.pools import PoolState
from kpi_pipeline.core.workloads.records import RecordState

RecordKey = tuple[str, str]  # (sobject, id)
EMAIL = "EmailMessage"

# The KPI rollups define the lead-facts frame; the ledger produces exactly that.
LEAD_FACTS_COLUMNS: tuple[str, ...] = lead_facts_columns()


class WorkloadStateMixin:
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

    def batch_work(self, conn: sa.Connection) -> BatchWork:
        """Set-based writes of one batch step in ``conn``'s transaction (``batch.py``)."""
        return BatchWork(conn, self._now(), _INSERT_DECISION)

    # --- records ------------------------------------------------------------------------

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
        for sobject, ids in by_sobject.items():
            for start in range(0, len(ids), 500):
                for record_id, state in _select_states(conn, sobject, ids[start : start + 500]):
                    found[(sobject, record_id)] = RecordState.from_json(_json_document(state))
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
        ids = sorted(set(activity_ids))
        c = t.email_activity_links.c
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            found.update(
                conn.execute(
                    sa.select(c.email_id, c.activity_id).where(
                        c.activity_id.in_(ids[start : start + 500])
                    )
                ).all()
            )
        return found

    def record(self, sobject: str, record_id: str) -> RecordState | None:
        with self.engine.connect() as conn:
            return self._load_records(conn, [(sobject, record_id)]).get((sobject, record_id))

    def records(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        return self._load_records(conn, sorted(set(keys)))

    # --- lead facts ---------------------------------------------------------------------

    def ensure_lead_facts(
        self, conn: sa.Connection, lead_id: str, *, created: datetime | None, owner_id: str | None
    ) -> None:
        """Create the lead's facts row or refresh its creation time and current owner
        (a None argument keeps the stored value)."""

        conn.execute(
            _ENSURE_LEAD_FACTS,
            {"Id": lead_id, "CreatedDate": created, "OwnerId": owner_id, "updated_at": self._now()},
        )

    def set_routing_facts(
        self, conn: sa.Connection, decision: RoutingDecision, *, calendar: str | None = None
    ) -> None:
        """Version, rule and SLA of the decision; ``calendar``: the SLA's business-hours
        calendar (None: 24x7)."""
        conn.execute(
            _SET_ROUTING_FACTS,
            {
                "lead_id": decision.lead_id,
                "p_Routing_Policy_Version__c": decision.policy_version,
                "p_Routing_Rule__c": decision.rule_id,
                "p_SLA_Minutes": decision.sla_minutes,
                "p_SLA_Calendar": calendar,
                "p_updated_at": self._now(),
            },
        )

    def set_sla_if_unrouted(
        self,
        conn: sa.Connection,
        lead_id: str,
        sla_minutes: float,
        *,
        calendar: str | None = None,
    ) -> None:
        """SLA (and its calendar) of a lead the pipeline did not route (a routing
        decision's SLA wins)."""
        conn.execute(
            _SET_SLA_IF_UNROUTED,
            {
                "lead_id": lead_id,
                "p_SLA_Minutes": sla_minutes,
                "p_SLA_Calendar": calendar,
                "p_updated_at": self._now(),
            },
        )

    def clock_inputs(self, conn: sa.Connection, lead_id: str) -> sa.Row[Any] | None:
        """What the lead's business-hours clocks are computed from, and their stored values."""
        c = t.lead_facts.c
        return conn.execute(
            sa.select(
                c.CreatedDate,
                c.SLA_Minutes,
                c.SLA_Calendar,
                c.First_Response_At__c,
                c.SLA_Due_At,
                c.Time_to_First_Response_Business_Minutes__c,
            ).where(c.Id == lead_id)
        ).first()

    def set_clocks(
        self,
        conn: sa.Connection,
        lead_id: str,
        *,
        due_at: datetime | None,
        business_minutes: float | None,
    ) -> None:
        conn.execute(
            _SET_CLOCKS,
            {
                "lead_id": lead_id,
                "p_SLA_Due_At": due_at,
                "p_Time_to_First_Response_Business_Minutes__c": business_minutes,
                "p_updated_at": self._now(),
            },
        )

    def clock_rows(
        self, conn: sa.Connection, *, after_id: str | None = None, limit: int = 1000
    ) -> list[sa.Row[Any]]:
        """Up to ``limit`` leads with a creation time, by Id after ``after_id``: what their
        clocks are computed from (``clock_inputs`` plus the routing rule) and the stored
        values, for recomputing them all in Id order (keyset pages)."""
        c = t.lead_facts.c
        query = sa.select(
            c.Id,
            c.CreatedDate,
            c.SLA_Minutes,
            c.SLA_Calendar,
            c.Routing_Rule__c,
            c.First_Response_At__c,
            c.SLA_Due_At,
            c.Time_to_First_Response_Business_Minutes__c,
        ).where(c.CreatedDate.is_not(None))
        if after_id is not None:
            query = query.where(c.Id > after_id)
        return list(conn.execute(query.order_by(c.Id).limit(limit)))

    def set_calendar_and_clocks(
        self,
        conn: sa.Connection,
        lead_id: str,
        *,
        calendar: str | None,
        due_at: datetime | None,
        business_minutes: float | None,
    ) -> None:
        """The lead's SLA calendar and the values derived from it, together."""
        conn.execute(
            _SET_CALENDAR_AND_CLOCKS,
            {
                "lead_id": lead_id,
                "p_SLA_Calendar": calendar,
                "p_SLA_Due_At": due_at,
                "p_Time_to_First_Response_Business_Minutes__c": business_minutes,
                "p_updated_at": self._now(),
            },
        )

    def set_assignment(
        self, conn: sa.Connection, lead_id: str, assigned_at: datetime, latency_minutes: float
    ) -> bool:
        """First user-owner time: only ever moves earlier (so any order gives the same answer)."""
        result = conn.execute(
            _SET_ASSIGNMENT,
            {
                "lead_id": lead_id,
                "p_Owner_Assigned_At__c": assigned_at,
                "p_Assignment_Latency_Minutes__c": latency_minutes,
                "p_updated_at": self._now(),
            },
        )
        return result.rowcount == 1

    def improve_first_response(self, conn: sa.Connection, lead_id: str, fr: FirstResponse) -> bool:
        """The TTFR guard, in the UPDATE itself: set the four fields only when the stored
        first response is empty or sorts strictly after ``fr`` by (at, source rank, record id).

        Two concurrent runs can therefore never move a first response later: whichever
        commits second re-evaluates the WHERE clause against the committed row.
        """
        result = conn.execute(
            _IMPROVE_FIRST_RESPONSE,
            {
                "p_id": lead_id,
                "p_at": fr.at,
                "p_rank": SOURCE_RANK[fr.source],
                "p_record": fr.record_id,
                "p_user": fr.user_id,
                "p_source": fr.source,
                "p_minutes": fr.minutes,
                "p_now": self._now(),
            },
        )
        return result.rowcount == 1

    def set_template_recommended(self, conn: sa.Connection, lead_id: str, template_id: str) -> None:
        conn.execute(
            _SET_TEMPLATE_RECOMMENDED,
            {
                "lead_id": lead_id,
                "p_Template_Recommended__c": template_id,
                "p_updated_at": self._now(),
            },
        )

    def set_template_applied(
        self,
        conn: sa.Connection,
        lead_id: str,
        template_id: str | None,
        *,
        at: datetime,
        record_id: str,
    ) -> bool:
        """Template of the lead's first outbound email (None: it used none); only an earlier
        email replaces it."""
        result = conn.execute(
            _SET_TEMPLATE_APPLIED,
            {
                "lead_id": lead_id,
                "p_Template_Applied__c": template_id,
                "p_template_applied_at": at,
                "p_template_applied_record_id": record_id,
                "p_updated_at": self._now(),
            },
        )
        return result.rowcount == 1

    def lead_facts(self, conn: sa.Connection, lead_ids: Iterable[str]) -> dict[str, sa.Row[Any]]:
        ids = sorted(set(lead_ids))
        found: dict[str, sa.Row[Any]] = {}
        for start in range(0, len(ids), 500):
            for row in conn.execute(
                sa.select(t.lead_facts).where(t.lead_facts.c.Id.in_(ids[start : start + 500]))
            ):
                found[row.Id] = row
        return found

    def lead_facts_frame(
        self, created_from: datetime | None = None, created_to: datetime | None = None
    ) -> pd.DataFrame:
        """Lead facts for the KPI rollups: one row per lead with a known creation time,
        created in [created_from, created_to), sorted by Id. Datetimes are tz-aware UTC
        (NaT for none), numbers float (NaN for none), text None for none.

        Columnar, not row by row through SQLAlchemy's result processing: PostgreSQL sends
        the rows with ``COPY ... TO STDOUT`` (times as epoch microseconds) into
        ``pandas.read_csv``; SQLite's rows come from the driver cursor in chunks and each
        column is converted at once (``facts_frame.py``)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                frame = facts_frame.postgres_frame(conn, created_from, created_to)
            else:
                frame = facts_frame.sqlite_frame(conn, created_from, created_to)
        return facts_frame.typed(frame)

    # --- response candidates ------------------------------------------------------------

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
        ids = sorted(set(lead_ids))
        found: dict[str, list[ResponseCandidate]] = {}
        c = t.response_candidates.c
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(t.response_candidates)
                .where(c.lead_id.in_(ids[start : start + 500]))
                .order_by(c.lead_id, c.at, c.rank, c.record_id)
            )
            for row in rows:
                found.setdefault(row.lead_id, []).append(
                    ResponseCandidate(row.lead_id, row.at, row.source, row.record_id, row.user_id)
                )
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
        ids = sorted(set(lead_ids))
        found: dict[str, RoutingDecision] = {}
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(t.routing_decisions.c.lead_id, t.routing_decisions.c.decision).where(
                    t.routing_decisions.c.lead_id.in_(ids[start : start + 500])
                )
            )
            for lead_id, decision in rows:
                found[lead_id] = RoutingDecision.from_json(decision)
        return found

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
                assigned_today=canonical(state.assigned_today),
                state=canonical(state.to_json()),
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
                decision=canonical(decision.to_json()),
                decided_at=decision.decided_at,
                policy_version=decision.policy_version,
            )
        )
        return result.rowcount == 1

    # --- templates ----------------------------------------------------------------------

    def template_recommendations(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, str]:
        ids = sorted(set(lead_ids))
        found: dict[str, str] = {}
        c = t.template_recommendations.c
        for start in range(0, len(ids), 500):
            found.update(
                conn.execute(
                    sa.select(c.lead_id, c.template_id).where(
                        c.lead_id.in_(ids[start : start + 500])
                    )
                ).all()
            )
        return found

    def insert_template_recommendation(
        self,
        conn: sa.Connection,
        *,
        lead_id: str,
        template_id: str,
        model: str,
        decided_at: datetime,
        detail: Mapping[str, Any],
    ) -> bool:
        result = conn.execute(
            insert_ignore(conn, t.template_recommendations, ["lead_id"]).values(
                lead_id=lead_id,
                template_id=template_id,
                model=model,
                decided_at=decided_at,
                detail=canonical(dict(detail)),
            )
        )
        return result.rowcount == 1

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
        return [
            DecisionRow(
                id=row.id,
                workload=row.workload,
                lead_id=row.lead_id,
                decided_at=row.decided_at,
                policy_version=row.policy_version,
                rule_id=row.rule_id,
                model=row.model,
                request=row.request,
                response=row.response,
                replay_ids=list(row.replay_ids or []),
            )
            for row in rows
        ]


def _select_states(conn: sa.Connection, sobject: str, ids: Sequence[str]) -> list[Any]:
    """(id, state) of these records, through the driver's cursor in ``conn``'s transaction.

    The hottest read of processing (every record of every batch): SQLAlchemy's statement
    execution and result-row processing cost more than the query itself (bench/RESULTS.md,
    Replay), and the JSON document is decoded once, by ``_json_document``."""
    table = t.records.name
    cursor = conn.connection.cursor()
    try:
        if conn.dialect.name == "postgresql":
            cursor.execute(
                f"SELECT id, state FROM {table} WHERE sobject = %s AND id = ANY(%s)",
                (sobject, list(ids)),
            )
        else:
            marks = ",".join("?" * len(ids))
            cursor.execute(
                f"SELECT id, state FROM {table} WHERE sobject = ? AND id IN ({marks})",
                (sobject, *ids),
            )
        return cursor.fetchall()
    finally:
        cursor.close()


def _json_document(value: Any) -> Any:
    """A JSON column as the driver returns it: text on SQLite, already parsed by psycopg2."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _improve_first_response() -> Any:
    c = t.lead_facts.c
    at = sa.bindparam("p_at", type_=UTCDateTime)
    rank = sa.bindparam("p_rank", type_=sa.Integer)
    record = sa.bindparam("p_record", type_=sa.String)
    later = sa.or_(
        c.First_Response_At__c.is_(None),
        c.First_Response_At__c > at,
        sa.and_(c.First_Response_At__c == at, c.first_response_rank > rank),
        sa.and_(
            c.First_Response_At__c == at,
            c.first_response_rank == rank,
            c.first_response_record_id > record,
        ),
    )
    return (
        t.lead_facts.update()
        .where(c.Id == sa.bindparam("p_id"), later)
        .values(
            First_Response_At__c=at,
            First_Response_User__c=sa.bindparam("p_user"),
            First_Response_Source__c=sa.bindparam("p_source"),
            Time_to_First_Response__c=sa.bindparam("p_minutes", type_=sa.Float),
            first_response_rank=rank,
            first_response_record_id=record,
            updated_at=sa.bindparam("p_now", type_=UTCDateTime),
        )
    )


def _excluded(*columns: str) -> dict[str, str]:
    return {c: f'excluded."{c}"' for c in columns}


_SAVE_RECORD = text_insert(
    t.records,
    ["sobject", "id", "state", "updated_at"],
    ["sobject", "id"],
    _excluded("state", "updated_at"),
)
_SAVE_EMAIL_LINK = text_insert(
    t.email_activity_links,
    ["email_id", "activity_id"],
    ["email_id"],
    _excluded("activity_id"),
)
_ENSURE_LEAD_FACTS = text_insert(
    t.lead_facts,
    ["Id", "CreatedDate", "OwnerId", "updated_at"],
    ["Id"],
    {
        "CreatedDate": 'coalesce(excluded."CreatedDate", lead_facts."CreatedDate")',
        "OwnerId": 'coalesce(excluded."OwnerId", lead_facts."OwnerId")',
        "updated_at": 'excluded."updated_at"',
    },
)
_PUT_CANDIDATE = text_insert(
    t.response_candidates,
    ["record_id", "lead_id", "at", "source", "rank", "user_id"],
    ["record_id"],
    _excluded("lead_id", "at", "source", "rank", "user_id"),
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


def _update_lead(*columns: str, where: Any = None) -> Any:
    """``UPDATE lead_facts SET col = :p_col, ..., updated_at = :p_updated_at WHERE Id = :lead_id``."""
    c = t.lead_facts.c
    condition = c.Id == sa.bindparam("lead_id")
    if where is not None:
        condition = sa.and_(condition, where)
    return (
        t.lead_facts.update()
        .where(condition)
        .values(
            {
                name: sa.bindparam(f"p_{name}", type_=c[name].type)
                for name in (*columns, "updated_at")
            }
        )
    )


_c = t.lead_facts.c
_SET_ROUTING_FACTS = _update_lead(
    "Routing_Policy_Version__c", "Routing_Rule__c", "SLA_Minutes", "SLA_Calendar"
)
_SET_SLA_IF_UNROUTED = _update_lead(
    "SLA_Minutes", "SLA_Calendar", where=_c.Routing_Rule__c.is_(None)
)
_SET_CLOCKS = _update_lead("SLA_Due_At", "Time_to_First_Response_Business_Minutes__c")
_SET_CALENDAR_AND_CLOCKS = _update_lead(
    "SLA_Calendar", "SLA_Due_At", "Time_to_First_Response_Business_Minutes__c"
)
_SET_ASSIGNMENT = _update_lead(
    "Owner_Assigned_At__c",
    "Assignment_Latency_Minutes__c",
    where=sa.or_(
        _c.Owner_Assigned_At__c.is_(None),
        _c.Owner_Assigned_At__c > sa.bindparam("p_Owner_Assigned_At__c", type_=UTCDateTime),
    ),
)
_SET_TEMPLATE_RECOMMENDED = _update_lead(
    "Template_Recommended__c", where=_c.Template_Recommended__c.is_(None)
)
_applied_at = sa.bindparam("p_template_applied_at", type_=UTCDateTime)
_SET_TEMPLATE_APPLIED = _update_lead(
    "Template_Applied__c",
    "template_applied_at",
    "template_applied_record_id",
    where=sa.or_(
        _c.template_applied_at.is_(None),
        _c.template_applied_at > _applied_at,
        sa.and_(
            _c.template_applied_at == _applied_at,
            _c.template_applied_record_id > sa.bindparam("p_template_applied_record_id"),
        ),
    ),
)


_IMPROVE_FIRST_RESPONSE = _improve_first_response()
