"""Recomputing business-hours values after a calendar change (``kpi-pipeline policy recompute``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kpi_pipeline.app.processing.context import clock_named
from kpi_pipeline.app.processing.ledger_port import ClockLedger
from kpi_pipeline.core.ledger_rows import LeadClocks
from kpi_pipeline.core.policy.load import RoutingPolicy
from kpi_pipeline.core.workloads.business_hours import lead_clocks, policy_clocks
from kpi_pipeline.core.workloads.lead_route import first_matching_rule
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import LEAD
from kpi_pipeline.core.workloads.writeback_fields import FIRST_RESPONSE_GROUP, SLA_FIELDS


@dataclass(frozen=True, slots=True)
class RecomputeReport:
    """What ``recompute_clocks`` found: leads read, and leads whose values changed."""

    leads: int
    changed: int  # leads with any stored value changed (calendar, due time, business minutes)
    due_changed: int
    business_minutes_changed: int
    calendar_changed: int
    dry_run: bool

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def recompute_clocks(
    ledger: ClockLedger, policy: RoutingPolicy, *, dry_run: bool = False, page: int = 1000
) -> RecomputeReport:
    """Recompute every lead's SLA calendar, due time and business-minute TTFR under
    ``policy`` (after a calendar change), store what changed and mark it for write-back.

    Only derived values move: creation time, SLA minutes and the first response stay as
    measured, so a first response never moves later. A routed lead's calendar is the one
    ``policy`` names for its rule (else the default), an unrouted lead's the one of the
    first rule it matches now, exactly as processing would choose them; a lead whose
    record state is unknown keeps its stored calendar. The values are the processor's
    (``lead_clocks``), so a second run finds nothing to change. One write transaction per
    ``page`` leads, in Id order; ``dry_run`` only counts."""
    clocks = policy_clocks(policy.calendars)
    counts = {"leads": 0, "changed": 0, "due": 0, "business": 0, "calendar": 0}
    after: str | None = None
    while True:
        with ledger.read() if dry_run else ledger.write() as conn:
            rows = ledger.clock_rows(conn, after_id=after, limit=page)
            if not rows:
                break
            unrouted = [(LEAD, row.Id) for row in rows if row.Routing_Rule__c is None]
            states = ledger.records(conn, unrouted) if unrouted else {}
            for row in rows:
                calendar = _recomputed_calendar(policy, row, states.get((LEAD, row.Id)))
                due, business = lead_clocks(
                    clock_named(clocks, policy, calendar),
                    created=row.CreatedDate,
                    sla_minutes=row.SLA_Minutes,
                    first_response_at=row.First_Response_At__c,
                )
                dirty: set[str] = set()
                if business != row.Time_to_First_Response_Business_Minutes__c:
                    dirty |= set(FIRST_RESPONSE_GROUP)  # the group travels together
                    counts["business"] += 1
                if due != row.SLA_Due_At:
                    dirty |= set(SLA_FIELDS)
                    counts["due"] += 1
                moved = calendar != row.SLA_Calendar
                counts["calendar"] += moved
                counts["leads"] += 1
                if not (dirty or moved):
                    continue
                counts["changed"] += 1
                if dry_run:
                    continue
                ledger.set_calendar_and_clocks(conn, row.Id, LeadClocks(calendar, due, business))
                if dirty:
                    ledger.mark_dirty(conn, LEAD, row.Id, dirty)
            after = rows[-1].Id
    return RecomputeReport(
        leads=counts["leads"],
        changed=counts["changed"],
        due_changed=counts["due"],
        business_minutes_changed=counts["business"],
        calendar_changed=counts["calendar"],
        dry_run=dry_run,
    )


def _recomputed_calendar(policy: RoutingPolicy, row: Any, state: RecordState | None) -> str | None:
    if row.Routing_Rule__c is not None:
        return policy.calendar_name(row.Routing_Rule__c)
    if state is None:
        return row.SLA_Calendar
    rule = first_matching_rule(policy, state.fields)
    return policy.calendar_name(rule.id if rule is not None else None)
