"""Time to first response (CONTRACTS.md §4), pure.

A *candidate* is one completed Task or one outbound EmailMessage on a lead. The first
response is the minimum candidate by ``(time, source, record id)`` with EmailMessage
ranked before Task: sending an email creates both records at the same instant and the
EmailMessage is the primary one. A stored first response is only ever replaced by a
candidate that sorts strictly before it (``improves``), so re-delivery, reordering and
replays can never move a settled answer later.

Deleting a Task or EmailMessage, or reopening a Task, does not withdraw it as a candidate:
the response was made, and a settled first response never moves later, so withdrawing it
would only take effect when the record's completion and its deletion or reopening happened
to arrive in the same batch. The answer must not depend on how a stream is cut into batches
(``replay --batch-size``, micro-batches live, windows in a re-sync).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime
from kpi_pipeline.core.workloads.records import RecordState, completes_task, is_true

Source = Literal["EmailMessage", "Task"]
SOURCE_RANK: dict[str, int] = {"EmailMessage": 0, "Task": 1}
LEAD_PREFIX = "00Q"
TASK_PREFIX = "00T"
EMAIL_STATUS_DRAFT = "5"  # EmailMessage.Status picklist: 5 = Draft (never sent)


def is_lead_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(LEAD_PREFIX)


def _falsy(value: Any) -> bool:
    """Explicitly false (a missing value is *unknown*, not false)."""
    if isinstance(value, str):
        return value.strip().lower() == "false"
    return value is False


@dataclass(frozen=True, slots=True)
class ResponseCandidate:
    lead_id: str
    at: datetime
    source: Source
    record_id: str
    user_id: str | None

    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.at, SOURCE_RANK[self.source], self.record_id)


@dataclass(frozen=True, slots=True)
class FirstResponse:
    at: datetime
    user_id: str | None
    source: Source
    record_id: str
    minutes: float

    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.at, SOURCE_RANK[self.source], self.record_id)


def responder(record: RecordState) -> str | None:
    """``CreatedById`` of the record, else the commit user of its CREATE, else its last writer."""
    created_by = record.fields.get("CreatedById")
    if isinstance(created_by, str) and created_by:
        return created_by
    return record.created_by or record.last_commit_user


def _completion_time(task: RecordState) -> datetime | None:
    completed_at = parse_sf_datetime(task.fields.get("CompletedDateTime"))
    if completed_at is not None:
        return completed_at
    # Commit time of the change that completed it: the earliest of the fields that say so.
    markers = []
    if task.fields.get("Status") == "Completed":
        markers.append(task.versions.get("Status"))
    if is_true(task.fields.get("IsClosed")):
        markers.append(task.versions.get("IsClosed"))
    commit_ms = [v[0] for v in markers if v is not None]
    if not commit_ms:
        return None
    return datetime.fromtimestamp(min(commit_ms) / 1000.0, tz=UTC)


def task_candidate(task: RecordState) -> ResponseCandidate | None:
    """A completed Task on a lead (WhoId 00Q…), or None, at its earliest completion.

    A Task deleted or reopened after it was completed still counts (see the module
    docstring): the earliest completion any of its events reported is kept in its state
    (``first_completed_ms``), so the answer is the same however its events were batched."""
    if task.sobject != "Task":
        return None
    lead_id = task.fields.get("WhoId")
    if not is_lead_id(lead_id):
        return None
    times = []
    if completes_task(task.fields):
        times.append(_completion_time(task))
    first_completed_ms = task.meta.get("first_completed_ms")
    if first_completed_ms is not None:
        times.append(datetime.fromtimestamp(first_completed_ms / 1000.0, tz=UTC))
    known = [at for at in times if at is not None]
    if not known:
        return None
    return ResponseCandidate(lead_id, min(known), "Task", task.record_id, responder(task))


def email_lead_id(
    email: RecordState, task_lookup: Callable[[str], RecordState | None]
) -> str | None:
    """The lead an EmailMessage belongs to: ``RelatedToId``, else its activity Task's WhoId."""
    related = email.fields.get("RelatedToId")
    if is_lead_id(related):
        return related
    activity_id = email.fields.get("ActivityId")
    if isinstance(activity_id, str) and activity_id:
        task = task_lookup(activity_id)
        if task is not None and is_lead_id(task.fields.get("WhoId")):
            return task.fields["WhoId"]
    return None


def email_candidate(
    email: RecordState, task_lookup: Callable[[str], RecordState | None]
) -> ResponseCandidate | None:
    """An outbound (``Incoming`` false), sent EmailMessage on a lead at ``MessageDate``, or None.

    An email deleted after it was sent still counts (see the module docstring)."""
    if email.sobject != "EmailMessage":
        return None
    if not _falsy(email.fields.get("Incoming")):
        return None
    if str(email.fields.get("Status", "")) == EMAIL_STATUS_DRAFT:
        return None
    at = parse_sf_datetime(email.fields.get("MessageDate"))
    lead_id = email_lead_id(email, task_lookup)
    if at is None or lead_id is None:
        return None
    return ResponseCandidate(lead_id, at, "EmailMessage", email.record_id, responder(email))


def qualifies(
    candidate: ResponseCandidate, *, lead_created: datetime, automation_users: frozenset[str]
) -> bool:
    """Automation users' records never count, nor responses before the lead existed."""
    if candidate.user_id is not None and candidate.user_id in automation_users:
        return False
    return candidate.at >= lead_created


def ttfr_minutes(created: datetime, at: datetime) -> float:
    return round((at - created).total_seconds() / 60.0, 2)


def to_first_response(candidate: ResponseCandidate, *, lead_created: datetime) -> FirstResponse:
    return FirstResponse(
        at=candidate.at,
        user_id=candidate.user_id,
        source=candidate.source,
        record_id=candidate.record_id,
        minutes=ttfr_minutes(lead_created, candidate.at),
    )


def first_response(
    candidates: Iterable[ResponseCandidate],
    *,
    lead_created: datetime,
    automation_users: frozenset[str],
) -> FirstResponse | None:
    """The minimum qualifying candidate by ``sort_key``, or None when nobody responded."""
    qualifying = [
        c
        for c in candidates
        if qualifies(c, lead_created=lead_created, automation_users=automation_users)
    ]
    if not qualifying:
        return None
    best = min(qualifying, key=ResponseCandidate.sort_key)
    return to_first_response(best, lead_created=lead_created)


def improves(current: FirstResponse | None, candidate: ResponseCandidate) -> bool:
    """True only when the candidate sorts strictly before the stored first response."""
    return current is None or candidate.sort_key() < current.sort_key()


def first_response_fields(fr: FirstResponse | None) -> dict[str, Any]:
    """The four Lead fields of §4.2, always set together (all None clears them)."""
    if fr is None:
        return {
            "First_Response_At__c": None,
            "First_Response_User__c": None,
            "First_Response_Source__c": None,
            "Time_to_First_Response__c": None,
        }
    return {
        "First_Response_At__c": format_sf_datetime(fr.at),
        "First_Response_User__c": fr.user_id,
        "First_Response_Source__c": fr.source,
        "Time_to_First_Response__c": fr.minutes,
    }


def first_response_to_json(fr: FirstResponse) -> dict[str, Any]:
    return {
        "at": format_sf_datetime(fr.at),
        "user_id": fr.user_id,
        "source": fr.source,
        "record_id": fr.record_id,
        "minutes": fr.minutes,
    }


def first_response_from_json(data: dict[str, Any]) -> FirstResponse:
    at = parse_sf_datetime(data.get("at"))
    if at is None or data.get("source") not in SOURCE_RANK:
        raise ValueError(f"stored first response {data!r} lacks 'at' or a valid 'source'")
    return FirstResponse(
        at, data.get("user_id"), data["source"], data["record_id"], data["minutes"]
    )
