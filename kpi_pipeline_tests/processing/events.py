"""Builders of recorded change events (CONTRACTS.md §2) for processor tests."""

from __future__ import annotations

from typing import Any

from kpi_pipeline.core.events import ChangeEvent

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z, epoch ms
MINUTE = 60_000
QUEUE = "00G000000000001AAA"
INTEGRATION_USER = "005000000000001AAA"
AUTOMATION_USER = "005000000000002AAA"
REP_A = "005000000000030AAA"
REP_B = "005000000000031AAA"
SMB_POOL = ("005000000000015AAA", "005000000000016AAA", "005000000000017AAA")

_replay = [0]


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
    nulled: tuple[str, ...] = (),
    **fields: Any,
) -> ChangeEvent:
    if replay is None:
        _replay[0] += 1
        replay = _replay[0]
    channel = f"/data/{entity}ChangeEvent"
    header = {
        "entityName": entity,
        "recordIds": [record_id],
        "changeType": change_type,
        "changeOrigin": origin,
        "transactionKey": f"tx-{record_id}-{at_ms}",
        "sequenceNumber": seq,
        "commitTimestamp": at_ms,
        "commitNumber": at_ms // 1000,
        "commitUser": user,
        "nulledFields": list(nulled),
        "diffFields": [],
        "changedFields": sorted({*fields, *nulled}) if change_type == "UPDATE" else [],
    }
    return ChangeEvent.from_recorded(
        {
            "channel": channel,
            "data": {
                "schema": f"schema-{entity}",
                "event": {"replayId": replay},
                "payload": {"ChangeEventHeader": header, **fields},
            },
        }
    )


def lead_created(lead_id: str, at_ms: int, *, owner: str = QUEUE, **fields: Any) -> ChangeEvent:
    values = {"Company": "Small Co", "LeadSource": "Web", "NumberOfEmployees": 20, "Status": "Open"}
    values.update(fields)
    return event("Lead", lead_id, "CREATE", at_ms, OwnerId=owner, CreatedDate=at_ms, **values)


def task_done(task_id: str, lead_id: str, at_ms: int, *, user: str = REP_A) -> ChangeEvent:
    return event(
        "Task",
        task_id,
        "CREATE",
        at_ms,
        user=user,
        WhoId=lead_id,
        Status="Completed",
        IsClosed=True,
        CompletedDateTime=at_ms,
        CreatedById=user,
    )


def email_sent(
    email_id: str, lead_id: str, at_ms: int, *, user: str = REP_A, template: str | None = None
) -> ChangeEvent:
    fields: dict[str, Any] = {
        "Incoming": False,
        "Status": "3",
        "MessageDate": at_ms,
        "RelatedToId": lead_id,
        "CreatedById": user,
        "Subject": "Hello",
    }
    if template:
        fields["EmailTemplateId"] = template
    return event("EmailMessage", email_id, "CREATE", at_ms, user=user, **fields)


def email_via_task(
    email_id: str, task_id: str, at_ms: int, *, user: str = REP_A, template: str | None = None
) -> ChangeEvent:
    """An outbound email whose only link to the lead is its ActivityId (the logging Task)."""
    fields: dict[str, Any] = {
        "Incoming": False,
        "Status": "3",
        "MessageDate": at_ms,
        "ActivityId": task_id,
        "CreatedById": user,
        "Subject": "Hello",
    }
    if template:
        fields["EmailTemplateId"] = template
    return event("EmailMessage", email_id, "CREATE", at_ms, user=user, **fields)
