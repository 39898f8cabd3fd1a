"""The rollups on frames read back from real ledgers (SQLite file, PostgreSQL) equal the
rollups on the hand-built frame: ``Ledger.lead_facts_frame`` and the rollups agree on dtypes,
missing values and time zones."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger.schema import lead_facts
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.core.kpis import compute_all, day_bounds, lead_facts_columns
from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS
from kpi_pipeline_tests.support.kpi_frames import AS_OF, hand_built_ledger

LOADED_AT = datetime(2026, 3, 4, tzinfo=UTC)


def ledger_rows(frame: pd.DataFrame) -> list[dict[str, object]]:
    """Frame rows as the ledger table takes them: aware datetimes, None for none."""
    rows = []
    for record in frame.astype(object).to_dict("records"):
        row = {key: (None if pd.isna(value) else value) for key, value in record.items()}
        for column in DATETIME_COLUMNS:
            if row[column] is not None:
                row[column] = row[column].to_pydatetime()
        rows.append({**row, "updated_at": LOADED_AT})
    return rows


def load(url: str) -> Ledger:
    ledger = Ledger.from_url(url)
    with ledger.engine.begin() as conn:
        conn.execute(lead_facts.insert(), ledger_rows(hand_built_ledger()))
    return ledger


def assert_same_rollups(ledger: Ledger, tz: str) -> None:
    expected = compute_all(hand_built_ledger(), as_of=AS_OF, tz=tz)
    frame = ledger.lead_facts_frame()
    assert list(frame.columns) == list(lead_facts_columns())
    actual = compute_all(frame, as_of=AS_OF, tz=tz)
    for name, table in expected.items():
        pd.testing.assert_frame_equal(actual[name], table, obj=name)


def assert_one_local_day(ledger: Ledger) -> None:
    # 2026-03-03 in Paris runs 2026-03-02 23:00Z .. 2026-03-03 23:00Z: L5 (23:30Z on the 2nd)
    # belongs to it, so the day has 7 leads.
    start, end = day_bounds("2026-03-03", tz="Europe/Paris")
    day = compute_all(ledger.lead_facts_frame(start, end), as_of=AS_OF, tz="Europe/Paris")
    assert day["ttfr_overall"][["day", "leads", "responded"]].values.tolist() == [
        ["2026-03-03", 7, 4]
    ]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
def test_rollups_from_a_sqlite_ledger(tmp_path: Path, tz: str) -> None:
    ledger = load(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert_same_rollups(ledger, tz)
        assert_one_local_day(ledger)
    finally:
        ledger.dispose()


@pytest.mark.postgres
def test_rollups_from_a_postgres_ledger(postgres_url: str) -> None:
    ledger = load(postgres_url)
    try:
        assert_same_rollups(ledger, "UTC")
        assert_same_rollups(ledger, "Europe/Paris")
        assert_one_local_day(ledger)
    finally:
        ledger.dispose()
