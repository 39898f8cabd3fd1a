"""What the re-sync needs from outside: the org's records and field history over REST, the
processor that applies the re-read, and the ledger's re-sync windows, record states and
staged schemas. ``kpi_pipeline.adapters.ledger.resync_windows.LedgerResyncWindows`` is the
ledger's side; ``SalesforceRest`` the org's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.resync_windows import ResyncWindow
from kpi_pipeline.core.workloads.records import RecordState


class RecordReader(Protocol):
    """What the re-sync needs of ``kpi_pipeline.adapters.salesforce.rest.SalesforceRest``: the
    records a page at a time, so that a window of any size is applied as it is read."""

    def pages_by_ids(
        self, sobject: str, fields: Sequence[str], ids: Iterable[str]
    ) -> Iterable[list[dict[str, Any]]]: ...

    def pages_modified_since(
        self, sobject: str, fields: Sequence[str], since: datetime, until: datetime | None = None
    ) -> Iterable[list[dict[str, Any]]]: ...


class HistoryReader(Protocol):
    """Field history (``SalesforceRest.field_history``); raises an error with
    ``error_code == "INVALID_TYPE"`` when the org has no history object."""

    def field_history(
        self, sobject: str, field: str, ids: Iterable[str]
    ) -> list[dict[str, Any]]: ...


class Processor(Protocol):
    def process(self, events: Sequence[ChangeEvent]) -> dict[str, Any]: ...


class StagedSchemas(Protocol):
    """The org's GetSchema answers staged with the events (``Ledger.staged_schemas``):
    (schema id, schema JSON) on ``channel`` (None: any), most recently staged first."""

    def staged_schemas(self, channel: str | None = None) -> list[tuple[str, str]]: ...


# Given a window's detail (a copy), returns the detail to store.
DetailChange = Callable[[dict[str, Any]], dict[str, Any]]


class ResyncLedger(StagedSchemas, Protocol):
    """What the re-sync reads and writes in the ledger."""

    def open_resync_windows(self) -> list[ResyncWindow]:
        """Open windows, oldest (lowest id) first."""
        ...

    def close_resync_window(self, window_id: int, *, detail: Mapping[str, Any]) -> bool:
        """Close a window, merging ``detail`` into its stored detail; False if it was
        closed already."""
        ...

    def update_open_resync_window(self, window_id: int, change: DetailChange) -> bool:
        """Replace an open window's detail by ``change(detail)`` in one transaction; False
        (and ``change`` not called) when the window is closed or unknown."""
        ...

    def record_states(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordState]:
        """The ledger's state of each (entity, record id) it knows."""
        ...
