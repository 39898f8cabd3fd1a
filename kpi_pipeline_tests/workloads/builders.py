"""Builders of ChangeEvents and record states for workload tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int, to_epoch_ms

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
REP = "0055g0000000004AAA"  # Liam Carter, sandbox rep
REP2 = "0055g0000000005AAA"  # Sofia Martinez, sandbox rep
BOT = "0055g0000000002AAA"  # automation user of the default policy
INTEGRATION = "0055g0000000001AAA"
LEAD = "00Q000000000001AAA"
_replays = itertools.count(1000)
_commits = itertools.count(1)

CHANNELS = {
    "Lead": "/data/LeadChangeEvent",
    "Task": "/data/TaskChangeEvent",
    "EmailMessage": "/data/EmailMessageChangeEvent",
}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ms(minutes: float) -> int:
    return to_epoch_ms(at(minutes))


def event(
    entity: str,
    record_id: str,
    change_type: str,
    minute: float,
    fields: dict[str, Any] | None = None,
    *,
    user: str = REP,
    commit_number: int | None = None,
    sequence: int = 1,
    nulled: tuple[str, ...] = (),
) -> ChangeEvent:
    values = dict(fields or {})
    for name in nulled:
        values[name] = None
    header = ChangeEventHeader(
        entity_name=entity,
        record_ids=(record_id,),
        change_type=change_type,
        change_origin="com/salesforce/api/rest/64.0",
        transaction_key=f"tx-{record_id}-{minute}",
        sequence_number=sequence,
        commit_timestamp=ms(minute),
        commit_number=next(_commits) if commit_number is None else commit_number,
        commit_user=user,
        nulled_fields=nulled,
        changed_fields=tuple(values),
    )
    return ChangeEvent(CHANNELS[entity], replay_id_from_int(next(_replays)), header, values)


def lead_create(record_id: str = LEAD, minute: float = 0, **fields: Any) -> ChangeEvent:
    values = {"CreatedDate": to_epoch_ms(at(minute)), "OwnerId": "00G5g0000000001EAA", **fields}
    return event("Lead", record_id, "CREATE", minute, values, user=INTEGRATION)


def task_create(
    task_id: str,
    minute: float,
    *,
    lead: str = LEAD,
    completed: bool = True,
    user: str = REP,
    **fields: Any,
) -> ChangeEvent:
    values = {
        "WhoId": lead,
        "Subject": "Call",
        "Status": "Completed" if completed else "Not Started",
        "IsClosed": completed,
        "CreatedById": user,
        **fields,
    }
    return event("Task", task_id, "CREATE", minute, values, user=user)


def email_create(
    email_id: str, minute: float, *, lead: str = LEAD, user: str = REP, **fields: Any
) -> ChangeEvent:
    values = {
        "RelatedToId": lead,
        "Incoming": False,
        "Status": "3",
        "MessageDate": at(minute).isoformat().replace("+00:00", "Z"),
        "Subject": "Hello",
        "CreatedById": user,
        **fields,
    }
    return event("EmailMessage", email_id, "CREATE", minute, values, user=user)
