"""Builders of change events (CONTRACTS.md §2) for every test: one module, one convention.

- **Times are epoch milliseconds.** Processor and KPI tests count from ``T0`` in ``MINUTE``s;
  the workload unit tests count minutes from ``MONDAY`` with ``ms(minute)`` (and compare with
  ``at(minute)``, the same instant as a datetime).
- **Fields are keyword arguments** (``Status="Working"``); ``nulled`` names the fields set to
  null (dotted for a compound child). A field given as ``None`` is left out of the payload.
- **Every event goes through the recorded form** (``ChangeEvent.from_recorded``), the form the
  pipeline replays: ``changedFields`` lists the fields of an UPDATE, ``commitNumber`` is the
  commit second unless given, and replay ids come from one counter unless given.

Two sets of ids: the ``TEST_POLICY`` ones (``support.processors``: ``INTEGRATION_USER``,
``AUTOMATION_USER``, ``REP_A``, ``REP_B``, ``SMB_POOL``, ``QUEUE``) and the sandbox org's, which
the packaged policy knows (``INTEGRATION``, ``BOT``, ``REP``, ``REP2``, ``SANDBOX_QUEUE``).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from kpi_pipeline.core.events import ChangeEvent, to_epoch_ms

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z, epoch ms
MINUTE = 60_000
MONDAY = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York, the workload tests' zero

# The test policy's users and queue (support.processors.TEST_POLICY).
QUEUE = "00G000000000001AAA"
INTEGRATION_USER = "005000000000001AAA"
AUTOMATION_USER = "005000000000002AAA"
REP_A = "005000000000030AAA"
REP_B = "005000000000031AAA"
SMB_POOL = ("005000000000015AAA", "005000000000016AAA", "005000000000017AAA")

# The sandbox org's users, as the packaged policy names them.
INTEGRATION = "0055g0000000001AAA"
BOT = "0055g0000000002AAA"  # automation user of the packaged policy
REP = "0055g0000000004AAA"  # Liam Carter, sandbox rep
REP2 = "0055g0000000005AAA"  # Sofia Martinez, sandbox rep
SANDBOX_QUEUE = "00G5g0000000001EAA"
LEAD = "00Q000000000001AAA"

# A small company's web lead: what lead_created fills in unless told otherwise.
TYPICAL_LEAD = {
    "Company": "Small Co",
    "LeadSource": "Web",
    "NumberOfEmployees": 20,
    "Status": "Open",
}

_replays = itertools.count(1)


def at(minute: float) -> datetime:
    """``minute`` minutes after MONDAY, as a datetime."""
    return MONDAY + timedelta(minutes=minute)


def ms(minute: float) -> int:
    """``minute`` minutes after MONDAY, in epoch milliseconds."""
    return to_epoch_ms(at(minute))


def event(
    entity: str,
    record_id: str,
    change_type: str,
    at_ms: int,
    *,
    user: str = INTEGRATION_USER,
    origin: str = "",
    replay: int | None = None,
    seq: int = 1,
    commit_number: int | None = None,
    nulled: tuple[str, ...] = (),
    **fields: Any,
) -> ChangeEvent:
    """One change event of ``entity`` committed at ``at_ms`` by ``user``."""
    header = {
        "entityName": entity,
        "recordIds": [record_id],
        "changeType": change_type,
        "changeOrigin": origin,
        "transactionKey": f"tx-{record_id}-{at_ms}",
        "sequenceNumber": seq,
        "commitTimestamp": at_ms,
        "commitNumber": at_ms // 1000 if commit_number is None else commit_number,
        "commitUser": user,
        "nulledFields": list(nulled),
        "diffFields": [],
        "changedFields": sorted({*fields, *nulled}) if change_type == "UPDATE" else [],
    }
    return ChangeEvent.from_recorded(
        {
            "channel": f"/data/{entity}ChangeEvent",
            "data": {
                "schema": f"schema-{entity}",
                "event": {"replayId": next(_replays) if replay is None else replay},
                "payload": {"ChangeEventHeader": header, **fields},
            },
        }
    )


def lead_created(
    lead_id: str,
    at_ms: int,
    *,
    owner: str = QUEUE,
    user: str = INTEGRATION_USER,
    typical: bool = True,
    **fields: Any,
) -> ChangeEvent:
    """A lead created at ``at_ms`` owned by ``owner``: a TYPICAL_LEAD unless ``typical=False``
    (then only CreatedDate, OwnerId and the fields given)."""
    values = {"OwnerId": owner, "CreatedDate": at_ms, **(TYPICAL_LEAD if typical else {}), **fields}
    return event("Lead", lead_id, "CREATE", at_ms, user=user, **values)


def task_created(
    task_id: str,
    lead_id: str,
    at_ms: int,
    *,
    user: str = REP_A,
    completed: bool = True,
    **fields: Any,
) -> ChangeEvent:
    """A Task on the lead created by ``user``, Completed (or Not Started)."""
    values = {
        "WhoId": lead_id,
        "Status": "Completed" if completed else "Not Started",
        "IsClosed": completed,
        "CreatedById": user,
        **fields,
    }
    return event("Task", task_id, "CREATE", at_ms, user=user, **values)


def task_done(task_id: str, lead_id: str, at_ms: int, *, user: str = REP_A) -> ChangeEvent:
    """A completed Task whose CompletedDateTime is its creation."""
    return task_created(task_id, lead_id, at_ms, user=user, CompletedDateTime=at_ms)


def email_sent(
    email_id: str,
    lead_id: str | None,
    at_ms: int,
    *,
    user: str = REP_A,
    template: str | None = None,
    **fields: Any,
) -> ChangeEvent:
    """An outbound, sent EmailMessage related to the lead (``lead_id=None``: not related)."""
    values: dict[str, Any] = {
        "Incoming": False,
        "Status": "3",
        "MessageDate": at_ms,
        "RelatedToId": lead_id,
        "CreatedById": user,
        "Subject": "Hello",
        "EmailTemplateId": template,
        **fields,
    }
    return event("EmailMessage", email_id, "CREATE", at_ms, user=user, **values)


def email_via_task(
    email_id: str, task_id: str, at_ms: int, *, user: str = REP_A, template: str | None = None
) -> ChangeEvent:
    """An outbound email whose only link to the lead is its ActivityId (the logging Task)."""
    return email_sent(email_id, None, at_ms, user=user, template=template, ActivityId=task_id)


def leads_with_tasks(count: int) -> list[ChangeEvent]:
    """``count`` leads created a minute apart, each answered by a done Task 3 minutes after."""
    events: list[ChangeEvent] = []
    for n in range(count):
        lead_id = f"00Q000000000{n:03d}AAA"
        events.append(lead_created(lead_id, T0 + n * MINUTE))
        events.append(task_done(f"00T000000000{n:03d}AAA", lead_id, T0 + (n + 3) * MINUTE))
    return events
