"""Plain data the ledger hands to the batch processor and takes from it: a staged batch as
loaded for decoding, one workload decision (the source of its flywheel record), one
template recommendation, an event that failed at a stage (to be dead-lettered), and a
lead's recomputed business-hours values.

In the core so the ledger adapter can produce them and the use cases (``app/processing``)
can consume them without either importing the other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kpi_pipeline.core.raw import RawEvent


@dataclass(frozen=True, slots=True)
class LoadedBatch:
    """The staged events of one batch in delivery order, with the schemas to decode them."""

    batch_id: str
    channel: str
    events: list[RawEvent]
    schemas: dict[str, str]
    status: str


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One workload decision, the source of its flywheel record."""

    id: str
    workload: str
    lead_id: str
    decided_at: datetime
    policy_version: str | None
    rule_id: str | None
    model: str
    request: dict[str, Any]  # {"messages": [...], "metadata": {...}}
    response: dict[str, Any]  # the decision itself
    replay_ids: list[str]


@dataclass(frozen=True, slots=True)
class TemplateRecommendation:
    """The outreach template recommended for one lead, memoized once per lead."""

    lead_id: str
    template_id: str
    model: str
    decided_at: datetime
    detail: Mapping[str, Any]  # the selector's response


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """An event a stage failed on, as it is parked in the dead letters (once per channel,
    replay id and stage)."""

    channel: str
    replay_id: bytes
    batch_id: str | None
    stage: str
    reason: str
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class LeadClocks:
    """A lead's SLA calendar and the values derived from it, which are stored together."""

    calendar: str | None
    due_at: datetime | None
    business_minutes: float | None
