"""What ``policy simulate`` measures a policy on (CLI helpers, pure): each lead as it was
created, every first-response candidate of a recorded stream, and the frame of creation,
first response, SLA minutes and calendar that the SLA counts are taken from under a policy,
for leads of a stream or of a ledger."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.kpis.sla_views import SlaCounts, sla_in_both_clocks
from kpi_pipeline.core.policy.load import RoutingPolicy
from kpi_pipeline.core.workloads.business_hours import policy_clocks
from kpi_pipeline.core.workloads.first_touch import (
    ResponseCandidate,
    email_candidate,
    first_response,
    task_candidate,
)
from kpi_pipeline.core.workloads.lead_route import (
    RoutingDecision,
    first_matching_rule,
    lead_created_at,
    sla_minutes_for,
)
from kpi_pipeline.core.workloads.records import RecordState, merge_event

_SLA_COLUMNS = ("CreatedDate", "First_Response_At__c", "SLA_Minutes", "SLA_Calendar")


def leads_at_creation(events: Iterable[ChangeEvent]) -> list[RecordState]:
    """Each lead's state right after its CREATE event(s): what routing sees on arrival."""
    states: dict[str, RecordState] = {}
    for event in events:
        if event.entity != "Lead" or event.change_type != "CREATE":
            continue
        for record_id in event.record_ids:
            states[record_id] = merge_event(states.get(record_id), event, record_id)
    return list(states.values())


def response_candidates(events: Iterable[ChangeEvent]) -> dict[str, list[ResponseCandidate]]:
    """Per lead, every completed Task and outbound email of the stream (CONTRACTS.md §4),
    from the records as the whole stream leaves them."""
    states: dict[tuple[str, str], RecordState] = {}
    for event in events:
        if event.entity not in ("Task", "EmailMessage") or event.is_gap:
            continue
        for record_id in event.record_ids:
            key = (event.entity, record_id)
            states[key] = merge_event(states.get(key), event, record_id)

    def task(task_id: str) -> RecordState | None:
        return states.get(("Task", task_id))

    found: dict[str, list[ResponseCandidate]] = {}
    for (entity, _), state in sorted(states.items()):
        candidate = task_candidate(state) if entity == "Task" else email_candidate(state, task)
        if candidate is not None:
            found.setdefault(candidate.lead_id, []).append(candidate)
    return found


def sla_frame(
    leads: list[RecordState],
    decisions: Mapping[str, RoutingDecision],
    candidates: Mapping[str, list[ResponseCandidate]],
    policy: RoutingPolicy,
) -> pd.DataFrame:
    """One row per lead as ``policy`` would measure its SLA: creation, first response (its
    automation users do not count), SLA minutes and calendar of the routing decision's
    rule, or for a lead it does not route, of the first rule it matches."""
    rows = []
    for lead in leads:
        created = lead_created_at(lead)
        decision = decisions.get(lead.record_id)
        if decision is not None:
            rule_id, minutes = decision.rule_id, decision.sla_minutes
        else:
            rule = first_matching_rule(policy, lead.fields)
            rule_id = rule.id if rule is not None else None
            minutes = sla_minutes_for(policy, lead.fields)
        response = first_response(
            candidates.get(lead.record_id, []),
            lead_created=created,
            automation_users=frozenset(policy.automation_users),
        )
        responded = response.at if response is not None else None
        rows.append((created, responded, minutes, policy.calendar_name(rule_id)))
    return _typed(rows)


def ledger_sla_frame(
    leads: list[RecordState],
    decisions: list[RoutingDecision],
    facts: pd.DataFrame,
    policy: RoutingPolicy,
) -> pd.DataFrame:
    """The ledger's leads with their stored first response, SLA by ``policy``'s decisions."""
    rows = []
    for lead, decision in zip(leads, decisions, strict=True):
        responded = facts["First_Response_At__c"].get(lead.record_id, pd.NaT)
        rows.append(
            (
                lead_created_at(lead),
                None if pd.isna(responded) else responded,
                decision.sla_minutes,
                policy.calendar_name(decision.rule_id),
            )
        )
    return _typed(rows)


def _typed(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The rows as a frame of ``_SLA_COLUMNS`` with the dtypes the SLA counts expect."""
    frame = pd.DataFrame(
        [dict(zip(_SLA_COLUMNS, row, strict=True)) for row in rows], columns=list(_SLA_COLUMNS)
    )
    for column in ("CreatedDate", "First_Response_At__c"):
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[ns, UTC]")
    frame["SLA_Minutes"] = frame["SLA_Minutes"].astype("float64")
    frame["SLA_Calendar"] = frame["SLA_Calendar"].astype(object)
    return frame


def policy_sla(frame: pd.DataFrame, policy: RoutingPolicy, as_of: datetime) -> dict[str, SlaCounts]:
    """SLA counts of ``frame`` in both clocks, due times from ``policy``'s calendars."""
    return sla_in_both_clocks(frame, as_of=as_of, clocks=policy_clocks(policy.calendars))
