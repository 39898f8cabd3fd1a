"""``facts_frame``'s columnar read (binary COPY into Arrow on PostgreSQL, the driver cursor in
chunks on SQLite) against a plain SQLAlchemy read of the same rows: same values, NULLs,
microseconds, order and dtypes; empty windows; text after many NULL rows; times stored in
other ISO forms; reads between writes in one process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import facts_frame, postgres_facts
from kpi_pipeline.adapters.ledger.schema import lead_facts
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.core.kpis.lead_facts import empty_lead_facts

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night Europe's clocks go forward


def row(i: int, **values: object) -> dict[str, object]:
    """A lead_facts row: every fact NULL unless given."""
    base: dict[str, object] = {name: None for name in facts_frame.COLUMNS}
    return {**base, "Id": f"00Q{i:015d}", "updated_at": T0, **values}


def mixed_rows() -> list[dict[str, object]]:
    """All-NULL facts first (the rows that make SQLite's driver guess int64), then filled
    ones with microseconds, then a lead without a creation time (never returned)."""
    rows = [row(i, CreatedDate=T0 + timedelta(minutes=i)) for i in range(3)]
    for i in range(3, 8):
        at = T0 + timedelta(minutes=i, microseconds=123_457 * i)
        rows.append(
            row(
                i,
                CreatedDate=at,
                OwnerId="005A",
                Owner_Assigned_At__c=at + timedelta(seconds=1.5),
                Assignment_Latency_Minutes__c=0.025,
                First_Response_At__c=at + timedelta(hours=2),
                First_Response_User__c="005B",
                First_Response_Source__c="Task",
                Time_to_First_Response__c=120.0,
                Template_Recommended__c="tmpl_demo",
                Template_Applied__c="tmpl_demo" if i % 2 else None,
                Routing_Policy_Version__c="2026.03",
                Routing_Rule__c="smb",
                SLA_Minutes=60.0,
                Time_to_First_Response_Business_Minutes__c=30.5,
                SLA_Calendar="emea",
                SLA_Due_At=at + timedelta(hours=1),
            )
        )
    rows.append(row(99, OwnerId="005A"))
    return rows


def reference(ledger: Ledger, created_from: datetime, created_to: datetime) -> pd.DataFrame:
    """The same window read row by row through SQLAlchemy's result processing."""
    c = lead_facts.c
    query = (
        sa.select(*(c[name] for name in facts_frame.COLUMNS))
        .where(c.CreatedDate.is_not(None), c.CreatedDate >= created_from)
        .where(c.CreatedDate < created_to)
        .order_by(c.Id)
    )
    with ledger.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(query)]
    return facts_frame.typed(pd.DataFrame(rows, columns=list(facts_frame.COLUMNS)))


def read_by_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite windows of any size read by ADBC in child processes, split in two from 2 rows
    (by default only windows of 50,000 rows and more are)."""
    monkeypatch.setattr(facts_frame, "CHILD_MIN_ROWS", 0)
    monkeypatch.setattr(facts_frame, "SPLIT_MIN_ROWS", 2)


@pytest.fixture(params=["own cursor", "ADBC children"])
def sqlite_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A SQLite ledger file, read through the ledger's own cursor, then through the children."""
    if request.param == "ADBC children":
        read_by_children(monkeypatch)
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite, ADBC children",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql, two connections", marks=pytest.mark.postgres),
    ]
)
def ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The shared ``ledger_url`` with each backend's readers: SQLite's own cursor and its
    ADBC children, PostgreSQL over one connection and over two (split from 2 rows)."""
    if request.param.startswith("postgresql"):
        if request.param == "postgresql, two connections":
            monkeypatch.setattr(postgres_facts, "SPLIT_MIN_ROWS", 2)
        return request.getfixturevalue("make_postgres_db")()
    if request.param == "sqlite, ADBC children":
        read_by_children(monkeypatch)
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    opened = Ledger.from_url(ledger_url)
    yield opened
    opened.dispose()


def insert(ledger: Ledger, rows: list[dict[str, object]]) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(lead_facts.insert(), rows)
    if ledger.engine.dialect.name == "postgresql":  # the statistics the reader splits by
        with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE lead_facts"))


def test_the_frame_equals_a_row_by_row_read(ledger: Ledger) -> None:
    insert(ledger, list(reversed(mixed_rows())))
    start, end = T0, T0 + timedelta(days=1)
    frame = ledger.lead_facts_frame(start, end)
    pd.testing.assert_frame_equal(frame, reference(ledger, start, end))
    assert frame["Id"].tolist() == [f"00Q{i:015d}" for i in range(8)]
    assert frame["CreatedDate"].iloc[7] == pd.Timestamp(
        T0 + timedelta(minutes=7, microseconds=864_199)
    )
    assert frame["SLA_Calendar"].iloc[0] is None and frame["SLA_Calendar"].iloc[7] == "emea"
    assert frame.dtypes.to_dict() == empty_lead_facts().dtypes.to_dict()
    # No window: every lead with a creation time; a window is [from, to).
    assert len(ledger.lead_facts_frame()) == 8
    window = ledger.lead_facts_frame(T0 + timedelta(minutes=1), T0 + timedelta(minutes=3))
    assert window["Id"].tolist() == [f"00Q{i:015d}" for i in (1, 2)]


def awkward_rows() -> list[dict[str, object]]:
    """Values that a packed or text encoding could confuse: empty and separator-like strings,
    non-ASCII, a string that reads NULL, IEEE corner values, times far from now."""
    texts = [
        "",
        "=",
        "NULL",
        "a,b;'c'\"d\"",
        "line\nbreak\r",
        "\x01\x1f\\x00",
        "é ü 漢字 🙂",
        "x" * 32,
    ]
    numbers = [0.1 + 0.2, -0.0, 1e-300, 8218654.0134539995, float("inf"), -float("inf"), 0.0]
    rows = []
    for i, text in enumerate(texts):
        at = T0 + timedelta(minutes=i, microseconds=i * 7)
        rows.append(
            row(
                i,
                CreatedDate=at,
                OwnerId=text,
                First_Response_User__c=None if i % 2 else text,
                Template_Recommended__c=texts[-1 - i],
                Routing_Rule__c=text[:1] or None,
                SLA_Calendar=text,
                Owner_Assigned_At__c=datetime(1901, 12, 14, 20, 45, 52, 1, tzinfo=UTC),
                First_Response_At__c=datetime(2261, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
                Assignment_Latency_Minutes__c=numbers[i % len(numbers)],
                Time_to_First_Response__c=None if i % 3 else numbers[-1 - i % len(numbers)],
                SLA_Minutes=float(i),
            )
        )
    return rows


def test_awkward_values_read_exactly(ledger: Ledger) -> None:
    insert(ledger, awkward_rows())
    start, end = T0, T0 + timedelta(days=1)
    frame = ledger.lead_facts_frame(start, end)
    pd.testing.assert_frame_equal(frame, reference(ledger, start, end))
    assert frame["OwnerId"].tolist()[:3] == ["", "=", "NULL"]
    assert frame["First_Response_User__c"].iloc[1] is None
    assert frame.dtypes.to_dict() == empty_lead_facts().dtypes.to_dict()


def test_an_empty_window_has_the_rollups_dtypes(ledger: Ledger) -> None:
    empty = ledger.lead_facts_frame(T0, T0 + timedelta(days=1))
    pd.testing.assert_frame_equal(empty, empty_lead_facts(), check_index_type=False)
    insert(ledger, mixed_rows())
    before = ledger.lead_facts_frame(T0 - timedelta(days=2), T0 - timedelta(days=1))
    assert before.empty and before.dtypes.to_dict() == empty_lead_facts().dtypes.to_dict()


def test_bounds_must_be_aware(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        ledger.lead_facts_frame(datetime(2026, 3, 29), None)


def test_sqlite_text_after_more_null_rows_than_the_drivers_batch(sqlite_url: str) -> None:
    # A reader that infers a column's type from its first rows (as ADBC's SQLite driver does
    # per 1,024-row batch) would make these int64 and fail on the text at the end.
    ledger = Ledger.from_url(sqlite_url)
    try:
        rows = [row(i, CreatedDate=T0 + timedelta(seconds=i)) for i in range(3000)]
        rows[-1] |= {"SLA_Calendar": "apac", "SLA_Due_At": T0, "First_Response_User__c": "005C"}
        insert(ledger, rows)
        frame = ledger.lead_facts_frame(T0, T0 + timedelta(days=1))
        pd.testing.assert_frame_equal(frame, reference(ledger, T0, T0 + timedelta(days=1)))
        assert frame["SLA_Calendar"].iloc[-1] == "apac"
        assert frame["SLA_Due_At"].iloc[-1] == pd.Timestamp(T0)
    finally:
        ledger.dispose()


def test_sqlite_times_written_in_other_iso_forms(sqlite_url: str) -> None:
    ledger = Ledger.from_url(sqlite_url)
    try:
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql(
                'INSERT INTO lead_facts ("Id", "CreatedDate", "First_Response_At__c", updated_at)'
                " VALUES ('00Q1', '2026-03-29 01:00:00.000000', '2026-03-29T03:15:00+00:00',"
                " '2026-03-29 01:00:00')"
            )
        frame = ledger.lead_facts_frame(T0, T0 + timedelta(days=1))
        assert frame["First_Response_At__c"].tolist() == [pd.Timestamp("2026-03-29 03:15Z")]
        assert frame.dtypes.to_dict() == empty_lead_facts().dtypes.to_dict()
    finally:
        ledger.dispose()


def test_reads_between_writes_in_one_process_see_every_commit(ledger: Ledger) -> None:
    # The pipeline's process writes and reads the same ledger: a reader with its own copy of
    # SQLite (ADBC's) saw a stale snapshot here and broke the ledger's file locks.
    rows = mixed_rows()
    insert(ledger, rows[:3])
    assert len(ledger.lead_facts_frame()) == 3
    insert(ledger, rows[3:6])
    assert len(ledger.lead_facts_frame()) == 6
    insert(ledger, rows[6:])
    assert len(ledger.lead_facts_frame()) == 8
    with ledger.engine.connect() as conn:  # the ledger's own connections still work
        assert conn.execute(sa.select(sa.func.count()).select_from(lead_facts)).scalar() == 9


@pytest.mark.postgres
def test_postgres_halves_read_one_snapshot(
    make_postgres_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger.from_url(make_postgres_db())
    monkeypatch.setattr(postgres_facts, "SPLIT_MIN_ROWS", 2)
    insert(ledger, mixed_rows())
    read_upper_half = postgres_facts._read_in_snapshot

    def commit_then_read(*args: object):
        # A lead committed after the read began, in the upper half's Id range: the second
        # connection must not see it, as one read would not.
        insert(ledger, [row(50, CreatedDate=T0 + timedelta(minutes=50))])
        return read_upper_half(*args)

    monkeypatch.setattr(postgres_facts, "_read_in_snapshot", commit_then_read)
    frame = ledger.lead_facts_frame()
    assert len(frame) == 8 and f"00Q{50:015d}" not in set(frame["Id"])
    monkeypatch.setattr(postgres_facts, "_read_in_snapshot", read_upper_half)
    assert len(ledger.lead_facts_frame()) == 9  # the next read sees it
    ledger.dispose()
