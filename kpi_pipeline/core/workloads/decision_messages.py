"""The flywheel messages of the rule-based decisions (pure): what each decision was asked, in the
OpenAI chat shape the flywheel contract uses. A decision's id is a hash of these messages, so
their text is part of the contract: changing a word changes every id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kpi_pipeline.core.canonical import dumps
from kpi_pipeline.core.events import format_sf_datetime
from kpi_pipeline.core.workloads.first_touch import ResponseCandidate

Messages = list[dict[str, Any]]


def routing_messages(
    policy_version: str,
    lead_id: str,
    lead_input: Mapping[str, Any],
    pools_before: Mapping[str, Any],
) -> Messages:
    return [
        {
            "role": "system",
            "content": f"Route this inbound lead with routing policy {policy_version}: "
            "first matching rule wins, pools assign by weighted round robin.",
        },
        {
            "role": "user",
            "content": dumps({"lead_id": lead_id, "lead": lead_input, "pools": pools_before}),
        },
    ]


def superseded_messages(
    lead_id: str, decided_owner: str, actual_owner: str, seen_in: str
) -> Messages:
    return [
        {
            "role": "system",
            "content": "A person changed the lead's owner after it became unrouted: their "
            "owner stands and the routing decision's owner is not written.",
        },
        {
            "role": "user",
            "content": dumps(
                {
                    "lead_id": lead_id,
                    "decided_owner": decided_owner,
                    "actual_owner": actual_owner,
                    "seen_in": seen_in,
                }
            ),
        },
    ]


def first_touch_messages(
    lead_id: str, created: datetime, candidates: Sequence[ResponseCandidate]
) -> Messages:
    shown = [
        {
            "record_id": c.record_id,
            "source": c.source,
            "at": _sf_time(c.at),
            "user_id": c.user_id,
        }
        for c in candidates
    ]
    return [
        {
            "role": "system",
            "content": "Find the lead's first qualifying response: the earliest completed Task or "
            "outbound EmailMessage by (time, EmailMessage before Task, record id), not by an "
            "automation user, not before the lead was created.",
        },
        {
            "role": "user",
            "content": dumps(
                {"lead_id": lead_id, "created": _sf_time(created), "candidates": shown}
            ),
        },
    ]


def _sf_time(value: datetime | None) -> str | None:
    return format_sf_datetime(value) if value is not None else None
