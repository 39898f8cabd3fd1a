"""What every workload step shares: the ledger, the policy and the clock, and the ways a step
records a decision, isolates one lead's work and dead-letters what fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.app.processing.batch_port import BatchWork
from kpi_pipeline.app.processing.handover import RecordHandOver, RecordKey
from kpi_pipeline.app.processing.ledger_port import ProcessingLedger
from kpi_pipeline.app.writeback import OwnerRules
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.flywheel.records import compute_record_id
from kpi_pipeline.core.ledger_rows import DecisionRow, FailedEvent
from kpi_pipeline.core.policy.load import RoutingPolicy
from kpi_pipeline.core.workloads.business_hours import ALWAYS_OPEN, BusinessClock, lead_clocks
from kpi_pipeline.core.workloads.lead_route import RoutingDecision, current_owner
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import EMAIL, TASK
from kpi_pipeline.core.workloads.writeback_fields import FIRST_RESPONSE_GROUP, SLA_FIELDS
from kpi_pipeline.telemetry import metrics

log = logging.getLogger("kpi_pipeline.app.processing")

MAX_REPLAY_IDS_IN_METADATA = 20  # flywheel metadata values are capped at 512 characters


def clock_named(
    clocks: Mapping[str | None, BusinessClock], policy: RoutingPolicy, calendar: str | None
) -> BusinessClock:
    """A stored calendar name the policy no longer defines falls back to its default."""
    if calendar in clocks:
        return clocks[calendar]
    return clocks.get(policy.default_calendar, ALWAYS_OPEN)


@dataclass(frozen=True)
class StepContext:
    """``clock=None`` is the event clock (decisions timestamped from the events behind them,
    which makes ``replay`` deterministic); the live job passes the wall clock."""

    ledger: ProcessingLedger
    policy: RoutingPolicy
    client_id: str
    owner_rules: OwnerRules
    clocks: Mapping[str | None, BusinessClock]
    clock: Callable[[], datetime] | None = None
    handover: RecordHandOver = field(default_factory=RecordHandOver)

    def records(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        """Record states by key: the ones the merge of this ``process()`` call committed
        (``handover.py``), else read from the ledger."""
        return self.handover.records(self.ledger, conn, keys)

    def decided_at(self, event_time: datetime) -> datetime:
        return self.clock() if self.clock is not None else event_time

    def business_clock(self, calendar: str | None) -> BusinessClock:
        return clock_named(self.clocks, self.policy, calendar)

    def current_owner(self, state: RecordState, decision: RoutingDecision | None) -> str | None:
        return current_owner(
            state,
            decision,
            integration_users=self.owner_rules.integration_users,
            client_id=self.client_id,
        )

    def dead_letter(
        self, event: ChangeEvent, stage: str, reason: str, *, conn: sa.Connection | None = None
    ) -> None:
        metrics.record_error(f"processing_{stage}")
        log.warning(
            "dead-lettering %s event %s at %s: %s", event.entity, event.replay_int, stage, reason
        )
        self.ledger.dead_letter(
            FailedEvent(
                channel=event.channel,
                replay_id=event.replay_id,
                batch_id=None,
                stage=stage,
                reason=reason,
                payload=None,
            ),
            conn=conn,
        )

    def isolated(
        self, batch: BatchWork, stage: str, work: Callable[[], str], events: list[ChangeEvent]
    ) -> str:
        """Run one lead's work against the batch's in-memory state. If the workload code
        fails on it, its changes are undone (``BatchWork.rollback``), the events behind it
        are dead-lettered and the batch goes on; database errors still fail the step (the
        run retries it)."""
        batch.checkpoint()
        try:
            outcome = work()
        except sa.exc.SQLAlchemyError:
            raise
        except Exception as exc:
            batch.rollback()
            reason = f"{type(exc).__name__}: {exc}"
            if not events:
                metrics.record_error(f"processing_{stage}")
                log.error("%s failed with no event to dead-letter: %s", stage, reason)
            for event in events:
                self.dead_letter(event, stage, reason, conn=batch.conn)
            return "dead_lettered"
        batch.release()
        return outcome

    def record_decision(
        self,
        batch: BatchWork,
        *,
        workload: str,
        lead_id: str,
        decided_at: datetime,
        rule_id: str | None,
        model: str,
        messages: list[dict[str, Any]],
        response: dict[str, Any],
        replay_ids: list[str],
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        """Store a flywheel decision when the batch flushes; ``on_stored`` runs then if this
        very decision was not stored before."""
        decision_id = compute_record_id(
            workload_id=workload,
            client_id=self.client_id,
            lead_id=lead_id,
            model=model,
            messages=messages,
        )
        replays = sorted(set(replay_ids))
        metadata = {
            "lead_id": lead_id,
            "policy_version": self.policy.version,
            "rule": rule_id or "",
            "replay_ids": ",".join(replays[:MAX_REPLAY_IDS_IN_METADATA]),
            "decision_id": decision_id,
        }
        row = DecisionRow(
            id=decision_id,
            workload=workload,
            lead_id=lead_id,
            decided_at=decided_at,
            policy_version=self.policy.version,
            rule_id=rule_id,
            model=model,
            request={"messages": messages, "metadata": metadata},
            response=response,
            replay_ids=replays,
        )
        batch.insert_decision(row, on_stored)

    def refresh_clocks(self, batch: BatchWork, lead_id: str) -> set[str]:
        """The lead's SLA due time and business-minute TTFR, recomputed from its stored
        facts in its calendar. Called whenever the SLA or the first response may have
        changed, so the values do not depend on which of the two was processed first.
        Returns the write-back fields to mark dirty: the first-response group when the
        business minutes changed (they travel with the response), the due time when it did."""
        row = batch.clock_inputs(lead_id)
        if row is None or row.CreatedDate is None:
            return set()
        due, business = lead_clocks(
            self.business_clock(row.SLA_Calendar),
            created=row.CreatedDate,
            sla_minutes=row.SLA_Minutes,
            first_response_at=row.First_Response_At__c,
        )
        stored, stored_due = row.Time_to_First_Response_Business_Minutes__c, row.SLA_Due_At
        if (due, business) == (stored_due, stored):
            return set()
        batch.set_clocks(lead_id, due_at=due, business_minutes=business)  # updates ``row``
        dirty: set[str] = set()
        if business != stored:
            dirty |= set(FIRST_RESPONSE_GROUP)
        if due != stored_due:
            dirty |= set(SLA_FIELDS)
        return dirty

    def task_lookup(
        self, conn: sa.Connection, states: list[RecordState] | Any
    ) -> Callable[[str], RecordState | None]:
        """The Tasks that the emails among ``states`` name as their ActivityId."""
        activity_ids = {
            s.fields["ActivityId"]
            for s in states
            if s.sobject == EMAIL and isinstance(s.fields.get("ActivityId"), str)
        }
        tasks = self.records(conn, [(TASK, task_id) for task_id in activity_ids])
        return lambda task_id: tasks.get((TASK, task_id))
