"""Record states handed from the merge to the workload steps of one ``process()`` call.

The merge (``RecordsStep.apply_records``) reads the record states of a batch under its
locks, merges the events into them and commits them. Each workload step used to read the
same states back from the ledger (one query and one JSON decode per record and step: a
third of the replay's time). Inside ``BatchProcessor.process`` the merge now keeps what it
committed here and the steps take them from here, reading from the ledger only the records
the merge did not touch (Tasks named by an email, leads of stored candidates).

Why this is never stale, and correct without it:

* The hand-over only lives inside one ``scope()`` (one ``process()`` call, in the thread
  that runs it); ``process_cdc_batch``'s ops call the steps one by one, outside any scope,
  so a step run alone (or retried in a new process) reads the ledger exactly as before.
* Only the merge writes record states (no step does), so within the scope the kept states
  are the ones this call committed. Another writer (a concurrent run) may merge newer
  events into the same records between two steps; a step then sees the states as of this
  call's merge, which is what it would have read had that run committed a moment later.
  Both orders are possible without the hand-over, and the outcome rules (routing memo
  under pool locks, guards that only move values earlier) make them converge.
* Kept states are only added after the merge's write block ended without an error. That
  block committed, or (``one_transaction``, on SQLite) it is part of the batch's one
  transaction, which commits only if every step succeeds. Either way, if anything fails,
  the exception leaves ``process()`` and the scope is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from kpi_pipeline.core.workloads.records import RecordState

RecordKey = tuple[str, str]  # (sobject, id)


class RecordReader(Protocol):
    """What the hand-over needs of the ledger: record states by key, in ``conn``."""

    def records(self, conn: Any, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]: ...


class RecordHandOver:
    """States committed by the merge of the current ``process()`` call, per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _kept(self) -> dict[RecordKey, RecordState | None] | None:
        return getattr(self._local, "states", None)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Hand states over between the steps run inside this block (one batch)."""
        self._local.states = {}
        try:
            yield
        finally:
            self._local.states = None

    def keep(self, states: Mapping[RecordKey, RecordState | None]) -> None:
        """Record states just committed (None: the record is known not to exist); ignored
        outside a scope."""
        kept = self._kept()
        if kept is not None:
            kept.update(states)

    def records(
        self, ledger: RecordReader, conn: Any, keys: Iterable[RecordKey]
    ) -> dict[RecordKey, RecordState]:
        """``ledger.records(conn, keys)``, answered from the kept states where it can."""
        kept = self._kept()
        if kept is None:
            return ledger.records(conn, keys)
        wanted = sorted(set(keys))
        missing = [key for key in wanted if key not in kept]
        read = ledger.records(conn, missing) if missing else {}
        found: dict[RecordKey, RecordState] = {}
        for key in wanted:
            state = kept[key] if key in kept else read.get(key)
            if state is not None:
                found[key] = state
        return found
