"""Lead facts in the ledger (mixed into ``Ledger``): the per-row statements that create and
update a lead's facts row (creation, owner, routing, SLA and its clocks, assignment, first
response, templates), the reads behind them and the KPI frame.

The guards that keep effects idempotent and monotone live in the SQL itself (see
``improve_first_response``), so they also hold between two concurrent runs. The processing
steps write the same rules in bulk through ``batch_work`` (``batch.py``); ``policy
recompute`` and the tests use these statements."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import facts_frame, postgres_facts
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.schema import UTCDateTime
from kpi_pipeline.adapters.ledger.sql import text_insert
from kpi_pipeline.core.kpis.lead_facts import lead_facts_columns
from kpi_pipeline.core.ledger_rows import LeadClocks
from kpi_pipeline.core.workloads.first_touch import SOURCE_RANK, FirstResponse
from kpi_pipeline.core.workloads.lead_route import RoutingDecision

# The KPI rollups define the lead-facts frame; the ledger produces exactly that.
LEAD_FACTS_COLUMNS: tuple[str, ...] = lead_facts_columns()


class LeadFactsMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

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
        self, conn: sa.Connection, lead_id: str, clocks: LeadClocks
    ) -> None:
        """The lead's SLA calendar and the values derived from it, together."""
        conn.execute(
            _SET_CALENDAR_AND_CLOCKS,
            {
                "lead_id": lead_id,
                "p_SLA_Calendar": clocks.calendar,
                "p_SLA_Due_At": clocks.due_at,
                "p_Time_to_First_Response_Business_Minutes__c": clocks.business_minutes,
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

        Columnar, not row by row through SQLAlchemy's result processing (``facts_frame.py``
        says how, per backend); each reader builds the dtypes directly (a ``typed`` pass over
        a right frame costs 0.5 s)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                return postgres_facts.postgres_frame(conn, created_from, created_to)
            return facts_frame.sqlite_frame(conn, created_from, created_to)


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
