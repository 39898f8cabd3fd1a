"""Which events of a batch each workload step looks at (pure).

The ops of ``process_cdc_batch`` and ``BatchProcessor.process`` select with these functions, so a
step sees the same events whether the job runs it or ``replay`` does. Our own write-back's echoes
(``changeOrigin`` with our client id) update record state but never trigger work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from kpi_pipeline.core.events import ChangeEvent, replay_id_hex
from kpi_pipeline.core.workloads.lead_route import lead_created_at
from kpi_pipeline.core.workloads.records import RecordState

LEAD, TASK, EMAIL = "Lead", "Task", "EmailMessage"
_ROUTING_TRIGGERS = frozenset({"CREATE", "UNDELETE"})


def is_wildcard(record_id: str) -> bool:
    return "*" in record_id  # field-type conversions name ids like 001*; no record to merge


def is_echo(event: ChangeEvent, client_id: str) -> bool:
    """A change our own write-back made: it updates record state, never triggers work."""
    return event.origin_client() == client_id


def select_routing(events: Sequence[ChangeEvent], client_id: str) -> list[ChangeEvent]:
    """Lead creations (and undeletes) and Lead owner changes, not our own echoes."""
    return [
        e
        for e in events
        if e.entity == LEAD
        and not is_echo(e, client_id)
        and (
            e.change_type in _ROUTING_TRIGGERS
            or (e.change_type == "UPDATE" and "OwnerId" in e.fields)
        )
    ]


def select_first_touch(events: Sequence[ChangeEvent], client_id: str) -> dict[str, Any]:
    """Task and EmailMessage changes, plus the leads created in the batch (responses that
    arrived before their lead are waiting for them)."""
    return {
        "events": [e for e in events if e.entity in (TASK, EMAIL) and not is_echo(e, client_id)],
        "created_lead_ids": sorted(
            {
                rid
                for e in events
                if e.entity == LEAD and e.change_type == "CREATE"
                for rid in e.record_ids
            }
        ),
    }


def select_templates(events: Sequence[ChangeEvent], client_id: str) -> dict[str, Any]:
    """Leads that may just have been routed, and emails that may have used a template."""
    routing = select_routing(events, client_id)
    return {
        "lead_ids": sorted({rid for e in routing for rid in e.record_ids if not is_wildcard(rid)}),
        "email_events": [e for e in events if e.entity == EMAIL and not is_echo(e, client_id)],
        "lead_events": routing,  # to dead-letter a lead whose recommendation fails
        # Emails linked to their lead only through these Tasks are checked again.
        "task_ids": sorted(
            {
                rid
                for e in events
                if e.entity == TASK and not is_echo(e, client_id)
                for rid in e.record_ids
                if not is_wildcard(rid)
            }
        ),
    }


def events_of(events: Iterable[ChangeEvent], record_id: str) -> list[ChangeEvent]:
    """The events about one record, or (for a lead's emails) related to it."""
    return [
        e for e in events if record_id in e.record_ids or e.fields.get("RelatedToId") == record_id
    ]


def events_by_record(events: Iterable[ChangeEvent]) -> dict[str, list[ChangeEvent]]:
    """``events_of`` for every record at once: each record's events (or, for a lead, the
    emails related to it), in delivery order. One pass instead of one per record."""
    found: dict[str, list[ChangeEvent]] = {}
    for event in events:
        keys = dict.fromkeys(event.record_ids)
        related = event.fields.get("RelatedToId")
        if isinstance(related, str):
            keys[related] = None
        for key in keys:
            found.setdefault(key, []).append(event)
    return found


def replays_by_record(events: Iterable[ChangeEvent]) -> dict[str, list[str]]:
    """Each record's replay ids (hex), in delivery order: what a decision credits."""
    found: dict[str, list[str]] = {}
    for event in events:
        for rid in event.record_ids:
            if not is_wildcard(rid):
                found.setdefault(rid, []).append(replay_id_hex(event.replay_id))
    return found


def created_or_none(state: RecordState) -> datetime | None:
    try:
        return lead_created_at(state)
    except ValueError:
        return None  # seen only through updates; a re-sync will tell its creation time
