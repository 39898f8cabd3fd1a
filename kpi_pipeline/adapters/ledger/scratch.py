"""A throwaway SQLite ledger in a temporary folder, for ``kpi-pipeline replay``.

The folder (and the database in it) is removed when the context ends, after the ledger's
engine is disposed. ``clock`` pins the ledger's bookkeeping columns (staged_at,
created_at...), so a replay reads no wall clock.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from kpi_pipeline.adapters.ledger.store import Ledger


@contextmanager
def scratch_sqlite_ledger(clock: Callable[[], datetime] | None = None) -> Iterator[Ledger]:
    with tempfile.TemporaryDirectory(prefix="kpi-replay-") as scratch:
        ledger = Ledger.from_url(
            f"sqlite:///{Path(scratch) / 'ledger.db'}", clock=clock, scratch=True
        )
        try:
            yield ledger
        finally:
            ledger.dispose()
