"""Plain data the ledger hands to the batch processor and takes from it: a staged batch as
loaded for decoding, and one workload decision (the source of its flywheel record).

In the core so the ledger adapter can produce them and the use cases (``app/processing``)
can consume them without either importing the other."""

from __future__ import annotations

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
