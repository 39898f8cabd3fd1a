"""``SandboxStore``: the sandbox org's state, assembled from the store's parts.

Each part is a class over the same SQLite file (``StoreDatabase``): ``RecordWrites`` (writes
and the change events they publish), ``RecordReads`` (the REST server's reads) and
``ChangeFeed`` (the Pub/Sub server's reads, pruning, export). The package docstring gives the
shapes and the concurrency rules they share."""

from __future__ import annotations

from kpi_pipeline.sandbox.store.change_feed import ChangeFeed
from kpi_pipeline.sandbox.store.reads import RecordReads
from kpi_pipeline.sandbox.store.writes import RecordWrites


class SandboxStore(RecordWrites, RecordReads, ChangeFeed):
    """SQLite-backed state of the sandbox org (see the ``kpi_pipeline.sandbox.store`` docstring).

    Implements ``ChangeLogSource`` for the Pub/Sub API server and ``RecordStore`` for the REST
    server (``kpi_pipeline.sandbox.changelog``)."""
