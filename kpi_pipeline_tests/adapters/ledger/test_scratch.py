"""The scratch SQLite ledger replay runs on: pinned clock, removed afterwards."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger.scratch import scratch_sqlite_ledger
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.resync_windows import ResyncGap

PINNED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _database(ledger) -> Path:
    return Path(str(ledger.engine.url.database))


def test_it_is_a_fresh_ledger_on_the_pinned_clock_removed_afterwards() -> None:
    with scratch_sqlite_ledger(lambda: PINNED) as ledger:
        database = _database(ledger)
        assert database.is_file() and database.parent.name.startswith("kpi-replay-")
        assert ledger.open_resync_windows() == []  # empty, migrated
        ledger.record_resync_window(
            ResyncGap(
                channel="/data/LeadChangeEvent",
                reason="gap",
                from_replay=replay_id_from_int(1),
                from_time_ms=1000,
                to_time_ms=1000,
            )
        )
        [window] = ledger.open_resync_windows()
        assert window.detected_at.replace(tzinfo=UTC) == PINNED  # bookkeeping on our clock
    assert not database.parent.exists()


def test_two_are_independent_and_a_failure_still_removes_it() -> None:
    folders: list[Path] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        scratch_sqlite_ledger() as first,
        scratch_sqlite_ledger() as second,
    ):
        folders += [_database(first).parent, _database(second).parent]
        assert folders[0] != folders[1] and all(f.is_dir() for f in folders)
        raise RuntimeError("boom")
    assert not any(folder.exists() for folder in folders)
