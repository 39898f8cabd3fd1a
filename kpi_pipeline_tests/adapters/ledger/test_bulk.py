"""``bulk.executemany`` (driver cursor on SQLite) stores exactly what ``conn.execute`` of the
same statement stores: same bytes in every column, for every hot bulk statement."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg2 import EXECUTEMANY_VALUES_PLUS_BATCH

from kpi_pipeline.adapters.ledger import Ledger, bulk
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.batch_sql import _INSERT_OUTBOX, _INSERT_ROUTING, _UPSERT_FACTS
from kpi_pipeline.adapters.ledger.inbox import _STAGE_EVENT
from kpi_pipeline.adapters.ledger.memos import _INSERT_DECISION, _PUT_CANDIDATE
from kpi_pipeline.adapters.ledger.record_states import _SAVE_RECORD

T0 = datetime(2026, 11, 2, 14, 0, 5, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def _value(column: sa.Column[Any], n: int) -> Any:
    """A value of the column's type; every third one None where the column allows it."""
    if column.nullable and not column.primary_key and n % 3 == 2:
        return None
    kind = column.type
    if isinstance(kind, t.UTCDateTime):  # aware, in another zone too: stored as UTC
        return (T0 + timedelta(minutes=n)).astimezone(PLUS_TWO if n % 2 else UTC)
    if isinstance(kind, sa.JSON):
        return {"b": [n, 1.5, None], "a": {"x": "é"}} if n % 2 else ["v", n]
    if isinstance(kind, sa.Float):
        return n + 0.25
    if isinstance(kind, sa.Integer):
        return n
    if isinstance(kind, sa.Boolean):
        return bool(n % 2)
    if isinstance(kind, sa.LargeBinary):  # replay ids, Avro payloads
        return bytes([n, 0, 255]) + column.name.encode()
    return f"{column.name[:10]}-{n:03d}"


def _rows(table: sa.Table, columns: list[str], count: int = 7) -> list[dict[str, Any]]:
    return [{c: _value(table.c[c], n) for c in columns} for n in range(count)]


# Each bulk statement and its table; the rows carry exactly the statement's parameters.
CASES: dict[str, tuple[sa.TextClause, sa.Table]] = {
    "lead_facts": (_UPSERT_FACTS, t.lead_facts),
    "routing_decisions": (_INSERT_ROUTING, t.routing_decisions),
    "decisions": (_INSERT_DECISION, t.decisions),
    "records": (_SAVE_RECORD, t.records),
    "sf_outbox": (_INSERT_OUTBOX, t.sf_outbox),
    "response_candidates": (_PUT_CANDIDATE, t.response_candidates),
    "cdc_inbox": (_STAGE_EVENT, t.cdc_inbox),
}


def _stored(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bulk_rows_are_stored_as_sqlalchemy_stores_them(
    name: str, new_ledger: Callable[..., Ledger], tmp_path: Path
) -> None:
    statement, table = CASES[name]
    rows = _rows(table, list(statement.compile().params))
    stored = []
    for how in ("sqlalchemy", "bulk"):
        ledger = new_ledger(how)
        with ledger.write() as conn:
            if how == "bulk":
                bulk.executemany(conn, statement, rows)
                bulk.executemany(conn, statement, rows[:3])  # the ON CONFLICT clause too
            else:
                conn.execute(statement, rows)
                conn.execute(statement, rows[:3])
        stored.append(_stored(tmp_path / f"{how}.db", table.name))
    assert len(stored[0]) == len(rows)
    assert stored[0] == stored[1]


def _stored_pg(ledger: Ledger, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row but a generated id, in key order (the natural key where the id is generated)."""
    columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
    order = [c for c in columns if c.primary_key] or columns[:2]
    with ledger.read() as conn:
        return [tuple(row) for row in conn.execute(sa.select(*columns).order_by(*order))]


@pytest.mark.postgres
@pytest.mark.parametrize("name", sorted(CASES))
def test_bulk_upserts_on_postgresql_store_what_sqlalchemy_stores(
    name: str,
    new_ledger: Callable[..., Ledger],
    make_postgres_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Multi-row VALUES statements (``execute_values``), in pages, with the ON CONFLICT
    clause across pages: the same rows as SQLAlchemy's one statement a row."""
    monkeypatch.setattr(bulk, "VALUES_PAGE", 100)
    statement, table = CASES[name]
    assert isinstance(statement, bulk.UpsertText)  # so it takes the multi-row path
    rows = _rows(table, list(statement.compile().params), count=250)  # three pages
    stored = []
    for how in ("sqlalchemy", "bulk"):
        ledger = new_ledger(url=make_postgres_db())
        # psycopg2's execute_batch for what is not an upsert (PG_EXECUTEMANY_MODE)
        assert ledger.engine.dialect.executemany_mode is EXECUTEMANY_VALUES_PLUS_BATCH
        write = bulk.executemany if how == "bulk" else sa.Connection.execute
        with ledger.write() as conn:
            write(conn, statement, rows)
            write(conn, statement, _changed(rows[120:], table))  # conflicts, across pages
        stored.append(_stored_pg(ledger, table))
    assert len(stored[0]) == len(rows)
    assert stored[0] == stored[1]


def _changed(rows: list[dict[str, Any]], table: sa.Table) -> list[dict[str, Any]]:
    """The rows again with every value that is not a key changed (an update, where the
    statement updates)."""
    keys = {c.name for c in table.primary_key} | {"sobject", "record_id"}  # the outbox's key
    return [
        {c: v if c in keys else _value(table.c[c], n + 7) for c, v in row.items()}
        for n, row in enumerate(rows)
    ]


@pytest.mark.postgres
def test_an_upsert_that_updates_a_row_twice_goes_one_statement_a_row_on_postgresql(
    new_ledger: Callable[..., Ledger], make_postgres_db: Callable[[], str]
) -> None:
    """PostgreSQL refuses a statement that updates one row twice; such a call is written
    row by row, so the later row wins as it does in SQLAlchemy's path."""
    columns = list(_UPSERT_FACTS.compile().params)
    rows = _rows(t.lead_facts, columns, count=5)
    again = _changed(rows[1:2], t.lead_facts)
    stored = []
    for how in ("sqlalchemy", "bulk"):
        ledger = new_ledger(url=make_postgres_db())
        write = bulk.executemany if how == "bulk" else sa.Connection.execute
        with ledger.write() as conn:
            write(conn, _UPSERT_FACTS, [*rows, *again])
        stored.append(_stored_pg(ledger, t.lead_facts))
    assert stored[0] == stored[1]
    assert len(stored[1]) == 5


def test_insert_new_inserts_and_counts_only_rows_not_there_yet(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count adds up over PostgreSQL's pages; rows already there are left as they are."""
    monkeypatch.setattr(bulk, "VALUES_PAGE", 100)
    columns = list(_STAGE_EVENT.compile().params)
    rows = [{**row, "batch_id": "first"} for row in _rows(t.cdc_inbox, columns, count=250)]
    later = [{**row, "batch_id": "later"} for row in rows[120:]]
    with ledger.write() as conn:
        assert bulk.insert_new(conn, _STAGE_EVENT, rows[:200]) == 200
        assert bulk.insert_new(conn, _STAGE_EVENT, later) == 50
        assert bulk.insert_new(conn, _STAGE_EVENT, []) == 0
    with ledger.read() as conn:
        batches = conn.execute(
            sa.select(t.cdc_inbox.c.batch_id, sa.func.count()).group_by(t.cdc_inbox.c.batch_id)
        ).all()
    assert sorted(batches) == [("first", 200), ("later", 50)]


def test_insert_new_refuses_a_statement_that_updates(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="DO NOTHING"), ledger.write() as conn:
        bulk.insert_new(conn, _SAVE_RECORD, [])


def test_a_database_error_is_raised_as_sqlalchemy_raises_it(ledger: Ledger) -> None:
    """Through the driver's cursor too, so that a processing step fails on it instead of
    dead-lettering the lead it was working on (``StepContext.isolated``)."""
    row = _rows(t.cdc_inbox, list(_STAGE_EVENT.compile().params), count=1)[0]
    with pytest.raises(sa.exc.IntegrityError), ledger.write() as conn:
        bulk.insert_new(conn, _STAGE_EVENT, [{**row, "payload": None}])  # NOT NULL
    with pytest.raises(sa.exc.IntegrityError), ledger.write() as conn:
        bulk.executemany(
            conn, _SAVE_RECORD, [{"sobject": "Lead", "id": "00Q1", "state": {}, "updated_at": None}]
        )
    missing = sa.Table("not_a_ledger_table", sa.MetaData(), sa.Column("id", sa.String))
    no_such_table = (  # each driver's class for it
        sa.exc.ProgrammingError
        if ledger.engine.dialect.name == "postgresql"
        else sa.exc.OperationalError
    )
    with pytest.raises(no_such_table), ledger.write() as conn:
        bulk.rows_where_in(conn, list(missing.columns), missing.c.id, ["x"])


def test_a_row_missing_a_parameter_fails(new_ledger: Callable[..., Ledger]) -> None:
    ledger = new_ledger()
    with pytest.raises(KeyError), ledger.write() as conn:
        bulk.executemany(conn, _SAVE_RECORD, [{"sobject": "Lead", "id": "00Q1"}])


@pytest.mark.parametrize(
    "value",
    [
        T0,
        T0.astimezone(PLUS_TWO),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still six digits
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),  # a year of three digits
    ],
)
def test_utc_datetime_converts_in_one_step_what_sqlite_datetime_converts_in_two(
    value: datetime,
) -> None:
    """``UTCDateTime``'s own SQLite processors give the text SQLAlchemy's DATETIME gives
    the naive UTC value, and read back the same aware datetime."""
    dialect = sa.create_engine("sqlite://").dialect
    generic = sa.DateTime().dialect_impl(dialect)
    expected_text = generic.bind_processor(dialect)(value.astimezone(UTC).replace(tzinfo=None))
    kind = t.UTCDateTime()
    assert kind.bind_processor(dialect)(value) == expected_text
    assert kind.result_processor(dialect, None)(expected_text) == value
    assert kind.bind_processor(dialect)(None) is None
    assert kind.result_processor(dialect, None)(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        kind.bind_processor(dialect)(value.replace(tzinfo=None))


# Each keyed read of the processing steps: table, key, order, an equality filter.
READS: dict[str, tuple[sa.Table, str, tuple[str, ...], str | None]] = {
    "lead_facts": (t.lead_facts, "Id", (), None),
    "decisions": (t.decisions, "id", (), None),
    "routing_decisions": (t.routing_decisions, "lead_id", (), None),
    "response_candidates": (t.response_candidates, "lead_id", ("lead_id", "at", "rank"), None),
    "sf_outbox": (t.sf_outbox, "record_id", ("id",), "sobject"),
}


@pytest.mark.parametrize("name", sorted(READS))
def test_rows_where_in_reads_what_sqlalchemy_reads(name: str, ledger: Ledger) -> None:
    """On SQLite through the driver cursor, elsewhere through SQLAlchemy: the same values
    (converted by the column types), in chunks of ``CHUNK`` keys, each in the given order,
    with the equality filter applied."""
    table, key_name, order, equal_name = READS[name]
    rows = _rows(table, [c.name for c in table.columns], count=1_100)
    if equal_name is not None:  # half the rows match the filter
        for n, row in enumerate(rows):
            row[equal_name] = "Lead" if n % 2 else "Task"
    key = table.c[key_name]
    with ledger.write() as conn:
        conn.execute(table.insert(), rows)
    wanted = [row[key_name] for row in rows[::3]] + ["missing"] * 2
    order_by = [table.c[name] for name in order]
    equal = None if equal_name is None else (table.c[equal_name], "Lead")
    with ledger.write() as conn:
        got = bulk.rows_where_in(
            conn, list(table.columns), key, wanted, equal=equal, order_by=order_by
        )
        expected = [
            tuple(row)
            for start in range(0, len(set(wanted)), bulk.CHUNK)
            for row in conn.execute(
                sa.select(table)
                .where(key.in_(sorted(set(wanted))[start : start + bulk.CHUNK]))
                .where(sa.true() if equal is None else equal[0] == equal[1])
                .order_by(*order_by)
            )
        ]
    matching = [row for row in rows[::3] if equal is None or row[equal_name] == "Lead"]
    assert len(got) == len(matching) > 0 and got == expected
