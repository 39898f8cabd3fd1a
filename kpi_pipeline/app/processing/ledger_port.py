"""What the batch processor and ``recompute_clocks`` need of the ledger: the ports that
``kpi_pipeline.adapters.ledger.Ledger`` implements (the composition root and the CLI pass
one in; this package never imports the adapter).

Methods taking ``conn`` run inside the caller's transaction (``write()``), so one step is
one transaction; its set-based writes go through ``batch_work(conn)`` (``batch_port.py``).
The data crossing the port is core data (``core/ledger_rows.py``, ``core/workloads``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import sqlalchemy as sa

from kpi_pipeline.app.processing.batch_port import BatchWork
from kpi_pipeline.core.ledger_rows import FailedEvent, LeadClocks
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.core.workloads.first_touch import ResponseCandidate
from kpi_pipeline.core.workloads.lead_route import RoutingDecision
from kpi_pipeline.core.workloads.pools import PoolState
from kpi_pipeline.core.workloads.records import RecordState

RecordKey = tuple[str, str]  # (sobject, id)


class LedgerTransactions(Protocol):
    def write(self) -> AbstractContextManager[sa.Connection]:
        """One write transaction (exclusive on SQLite); commits on success."""
        ...

    def read(self) -> AbstractContextManager[sa.Connection]: ...


class RecordStates(Protocol):
    def records(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]: ...


class ProcessingLedger(LedgerTransactions, RecordStates, Protocol):
    """The ledger as the workload steps use it."""

    @property
    def exclusive_writes(self) -> bool:
        """Write transactions exclude each other (SQLite), so ``one_transaction`` is safe."""
        ...

    def one_transaction(self) -> AbstractContextManager[sa.Connection]:
        """One transaction that ``write()`` joins, with one batch-wide ``batch_work``."""
        ...

    def dead_letter(self, failed: FailedEvent, *, conn: sa.Connection | None = None) -> bool: ...
    def record_resync_window(self, gap: ResyncGap) -> int: ...
    def batch_work(self, conn: sa.Connection) -> BatchWork: ...
    def load_records_for_update(
        self, conn: sa.Connection, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]: ...
    def save_records(self, conn: sa.Connection, states: Iterable[RecordState]) -> None: ...
    def routing_decisions(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, RoutingDecision]: ...
    def lock_pools(self, conn: sa.Connection, pool_ids: Iterable[str]) -> dict[str, PoolState]: ...
    def emails_linked_to(
        self, conn: sa.Connection, activity_ids: Iterable[str]
    ) -> dict[str, str]: ...
    def put_candidates(
        self, conn: sa.Connection, candidates: Sequence[ResponseCandidate]
    ) -> None: ...
    def drop_candidates(self, conn: sa.Connection, record_ids: Sequence[str]) -> None: ...
    def candidates_for(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, list[ResponseCandidate]]: ...
    def template_recommendations(
        self, conn: sa.Connection, lead_ids: Iterable[str]
    ) -> dict[str, str]: ...


class ClockLedger(LedgerTransactions, RecordStates, Protocol):
    """The ledger as ``recompute_clocks`` uses it."""

    def clock_rows(
        self, conn: sa.Connection, *, after_id: str | None = None, limit: int = 1000
    ) -> list[Any]:
        """Rows with ``Id``, ``CreatedDate``, ``SLA_Minutes``, ``SLA_Calendar``,
        ``Routing_Rule__c``, ``First_Response_At__c``, ``SLA_Due_At`` and
        ``Time_to_First_Response_Business_Minutes__c`` attributes, by Id."""
        ...

    def set_calendar_and_clocks(
        self, conn: sa.Connection, lead_id: str, clocks: LeadClocks
    ) -> None: ...
    def mark_dirty(
        self, conn: sa.Connection, sobject: str, record_id: str, names: Iterable[str]
    ) -> bool: ...
