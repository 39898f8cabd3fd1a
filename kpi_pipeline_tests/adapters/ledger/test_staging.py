"""CDC staging, dead letters and re-sync windows on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kpi_pipeline.adapters.ledger import Ledger, LedgerError, migrations
from kpi_pipeline.adapters.ledger.schema import metadata
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.ledger_rows import FailedEvent
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.core.resync_windows import ResyncGap

LEAD = "/data/LeadChangeEvent"
SCHEMAS = {"schemaA": '{"type": "record", "name": "LeadChangeEvent", "fields": []}'}


def raw(replay: int, channel: str = LEAD, schema_id: str = "schemaA") -> RawEvent:
    return RawEvent(
        channel, replay_id_from_int(replay), schema_id, f"avro-{replay}".encode(), f"uuid-{replay}"
    )


def count(ledger: Ledger, table: str) -> int:
    with ledger.read() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_migrations_match_the_table_definitions(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
    assert migrations.current_revision(ledger.engine) == migrations.head_revision()


def test_reopening_an_upgraded_ledger_is_a_no_op(ledger_url: str, ledger: Ledger) -> None:
    ledger.stage_batch(LEAD, [raw(1)], SCHEMAS)
    again = Ledger.from_url(ledger_url)
    assert len(again.pending_batches()) == 1
    again.dispose()


def test_stage_then_load_returns_events_in_delivery_order(ledger: Ledger) -> None:
    events = [raw(30), raw(10), raw(20)]  # delivery order, not numeric order
    staged = ledger.stage_batch(LEAD, events, SCHEMAS)
    assert staged.batch_id == f"{LEAD}:000000000000001e-0000000000000014"
    assert (staged.count, staged.newly_staged) == (3, True)
    loaded = ledger.load_batch(staged.batch_id)
    assert loaded.events == events
    assert loaded.schemas == SCHEMAS
    assert (loaded.channel, loaded.status) == (LEAD, "staged")


def test_staging_the_same_events_twice_writes_nothing_new(ledger: Ledger) -> None:
    events = [raw(1), raw(2), raw(3)]
    first = ledger.stage_batch(LEAD, events, SCHEMAS)
    second = ledger.stage_batch(LEAD, events, SCHEMAS)
    assert second.batch_id == first.batch_id
    assert (second.count, second.newly_staged) == (3, False)
    assert count(ledger, "cdc_inbox") == 3
    assert count(ledger, "cdc_batches") == 1
    assert count(ledger, "cdc_schemas") == 1


def test_overlapping_redelivery_stages_only_new_events(ledger: Ledger) -> None:
    first = ledger.stage_batch(LEAD, [raw(1), raw(2)], SCHEMAS)
    second = ledger.stage_batch(LEAD, [raw(2), raw(3)], {})  # schema already known
    assert (second.count, second.newly_staged) == (1, True)
    assert [e.replay_id for e in ledger.load_batch(second.batch_id).events] == [
        replay_id_from_int(3)
    ]
    assert len(ledger.load_batch(first.batch_id).events) == 2
    nothing_new = ledger.stage_batch(LEAD, [raw(1), raw(3)], {})
    assert (nothing_new.count, nothing_new.newly_staged) == (0, False)
    assert ledger.batch(nothing_new.batch_id) is None
    assert count(ledger, "cdc_inbox") == 3


def test_a_redelivery_keeps_the_delivery_order_of_its_new_events(ledger: Ledger) -> None:
    """The events staged before leave gaps in the new batch's positions, not a new order."""
    ledger.stage_batch(LEAD, [raw(2), raw(4)], SCHEMAS)
    again = ledger.stage_batch(LEAD, [raw(5), raw(2), raw(3), raw(4), raw(1)], {})
    assert again.count == 3
    loaded = ledger.load_batch(again.batch_id).events
    assert [e.replay_id for e in loaded] == [replay_id_from_int(n) for n in (5, 3, 1)]


def test_same_replay_id_on_two_channels_is_two_events(ledger: Ledger) -> None:
    ledger.stage_batch(LEAD, [raw(5)], SCHEMAS)
    ledger.stage_batch("/data/TaskChangeEvent", [raw(5, "/data/TaskChangeEvent")], SCHEMAS)
    assert count(ledger, "cdc_inbox") == 2


@pytest.mark.parametrize(
    ("events", "schemas", "message"),
    [
        ([], SCHEMAS, "no events"),
        ([raw(1, "/data/TaskChangeEvent")], SCHEMAS, "other channels"),
        ([raw(1), raw(1)], SCHEMAS, "twice"),
        ([raw(1, schema_id="unknown")], {}, "no schema JSON for schema ids ['unknown']"),
    ],
)
def test_bad_staging_input_is_refused_and_writes_nothing(
    ledger: Ledger, events: list[RawEvent], schemas: dict[str, str], message: str
) -> None:
    with pytest.raises(LedgerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ledger.stage_batch(LEAD, events, schemas)
    assert count(ledger, "cdc_inbox") == 0
    assert count(ledger, "cdc_batches") == 0


def test_pending_batches_and_mark_done(ledger: Ledger) -> None:
    a = ledger.stage_batch(LEAD, [raw(1)], SCHEMAS)
    b = ledger.stage_batch(LEAD, [raw(2)], SCHEMAS)
    assert [p.batch_id for p in ledger.pending_batches()] == [a.batch_id, b.batch_id]
    assert ledger.mark_batch_done(a.batch_id, run_id="run-1", summary={"routed": 1}) is True
    assert ledger.mark_batch_done(a.batch_id, run_id="run-2", summary={"routed": 0}) is False
    info = ledger.batch(a.batch_id)
    assert info is not None
    assert (info.status, info.run_id, info.summary) == ("done", "run-1", {"routed": 1})
    assert info.completed_at is not None and info.completed_at.tzinfo is not None
    assert [p.batch_id for p in ledger.pending_batches()] == [b.batch_id]
    assert ledger.load_batch(a.batch_id).status == "done"


def test_unknown_batches_get_a_clear_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.load_batch("nope")
    with pytest.raises(LedgerError, match="never staged"):
        ledger.mark_batch_done("nope", run_id="r", summary={})


def test_dead_letters_are_unique_per_event_and_stage(ledger: Ledger) -> None:
    kwargs = {
        "channel": LEAD,
        "replay_id": replay_id_from_int(7),
        "batch_id": "b",
        "payload": b"\x00\x01",
    }
    assert ledger.dead_letter(FailedEvent(stage="decode", reason="bad avro", **kwargs)) is True
    again = FailedEvent(stage="decode", reason="bad avro again", **kwargs)
    assert ledger.dead_letter(again) is False
    assert ledger.dead_letter(FailedEvent(stage="apply_records", reason="boom", **kwargs)) is True
    letters = ledger.dead_letters()
    assert [(d.stage, d.reason) for d in letters] == [
        ("apply_records", "boom"),
        ("decode", "bad avro"),
    ]
    assert letters[1].payload == b"\x00\x01"
    assert letters[1].replay_id == replay_id_from_int(7)
    assert len(ledger.dead_letters(limit=1)) == 1


def test_the_dead_letter_summary_counts_all_and_recent_in_one_query(ledger_url: str) -> None:
    now = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    ledger = Ledger.from_url(ledger_url, clock=lambda: now[0])
    try:
        for minute, (stage, reason) in enumerate(
            [
                ("decode", "PayloadDecodeError: bad avro"),
                ("decode", "PayloadDecodeError: truncated"),
                ("apply_records", "KeyError: Id"),
                ("decode", "SchemaError: unknown schema"),
            ]
        ):
            now[0] = datetime(2026, 12, 1, 12, minute * 10, tzinfo=UTC)
            ledger.dead_letter(
                FailedEvent(
                    channel=LEAD,
                    replay_id=replay_id_from_int(minute + 1),
                    batch_id="b",
                    stage=stage,
                    reason=reason,
                    payload=None,
                )
            )
        since = datetime(2026, 12, 1, 12, 15, tzinfo=UTC)  # the last two are recent
        counts, recent = ledger.dead_letter_summary(since=since)
        assert (
            counts
            == ledger.dead_letter_counts()
            == {
                "apply_records: KeyError": 1,
                "decode: PayloadDecodeError": 2,
                "decode: SchemaError": 1,
            }
        )
        assert recent == sum(ledger.dead_letter_counts(since=since).values()) == 2
        assert ledger.dead_letter_summary(since=now[0] + timedelta(seconds=1)) == (counts, 0)
    finally:
        ledger.dispose()


def test_resync_windows_are_idempotent_and_close_once(ledger: Ledger) -> None:
    gap = {
        "channel": LEAD,
        "reason": "gap",
        "from_replay": replay_id_from_int(9),
        "from_time_ms": 1000,
        "to_time_ms": 2000,
        "detail": {"record_ids": ["00Q1"]},
    }
    first = ledger.record_resync_window(ResyncGap(**gap))
    again = ledger.record_resync_window(ResyncGap(**gap))  # the same window recorded twice
    other = ledger.record_resync_window(
        ResyncGap(
            channel=LEAD,
            reason="replay_id_invalid",
            from_replay=None,
            from_time_ms=1000,
            to_time_ms=None,
            detail={},
        )
    )
    assert first == again != other
    windows = ledger.open_resync_windows()
    assert [(w.id, w.reason, w.from_replay_hex) for w in windows] == [
        (first, "gap", "0000000000000009"),
        (other, "replay_id_invalid", None),
    ]
    assert ledger.close_resync_window(first, detail={"reread": 1}) is True
    assert ledger.close_resync_window(first, detail={"reread": 2}) is False
    closed = ledger.resync_windows(status="closed")
    assert [(w.id, w.detail) for w in closed] == [(first, {"record_ids": ["00Q1"], "reread": 1})]
    assert [w.id for w in ledger.open_resync_windows()] == [other]


def test_resync_window_needs_a_starting_point(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="starting point"):
        ledger.record_resync_window(
            ResyncGap(
                channel=LEAD, reason="gap", from_replay=None, from_time_ms=None, to_time_ms=None
            )
        )
    with pytest.raises(LedgerError, match="no resync window with id 99"):
        ledger.close_resync_window(99)


def test_sqlite_file_ledger_uses_wal(tmp_path) -> None:
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'ledger.db'}")
    with ledger.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
    ledger.dispose()


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(LedgerError, match="unsupported database"):
        Ledger.from_url("mysql://u@h/db")


def test_find_batch_after_returns_the_batch_an_interrupted_tick_staged(ledger: Ledger) -> None:
    first = ledger.stage_batch(LEAD, [raw(1), raw(2)], SCHEMAS, after_replay="")
    second = ledger.stage_batch(LEAD, [raw(3)], SCHEMAS, after_replay=first.last_replay_hex)
    found = ledger.find_batch_after(LEAD, first.last_replay_hex)
    assert found is not None
    assert (found.batch_id, found.count, found.newly_staged) == (second.batch_id, 1, False)
    assert ledger.find_batch_after(LEAD, "") is not None
    assert ledger.find_batch_after(LEAD, second.last_replay_hex) is None
    assert ledger.find_batch_after("/data/TaskChangeEvent", "") is None
    info = ledger.batch(second.batch_id)
    assert info is not None and info.after_replay == first.last_replay_hex
