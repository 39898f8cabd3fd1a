"""Record states handed from the merge to the steps of one ``process()`` call
(``kpi_pipeline/app/processing/handover.py``): read once per batch inside ``process()``,
read from the ledger by a step run on its own (a Dagster op, a retry in a new process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.selection import LEAD, TASK
from kpi_pipeline_tests.support.events import leads_with_tasks
from kpi_pipeline_tests.support.ledgers import facts_by_id
from kpi_pipeline_tests.support.processors import make_processor

NewLedger = Callable[..., Ledger]
Key = tuple[str, str]


def _batch(count: int = 20) -> list[ChangeEvent]:
    return leads_with_tasks(count)


def _spy_reads(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[Key]:
    """Every key the processing steps read through ``Ledger.records``."""
    read: list[Key] = []
    original = ledger.records

    def records(conn: sa.Connection, keys: Iterable[Key]) -> dict[Key, object]:
        wanted = list(keys)
        read.extend(wanted)
        return original(conn, wanted)

    monkeypatch.setattr(ledger, "records", records)
    return read


def test_process_reads_the_batch_records_once(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside ``process()`` no step reads back a record the merge just committed (the merge
    itself reads them under its locks, through ``load_records_for_update``)."""
    ledger = new_ledger()
    read = _spy_reads(ledger, monkeypatch)
    batch = _batch()
    summary = make_processor(ledger).process(batch)

    merged = {(e.entity, rid) for e in batch for rid in e.record_ids}
    assert summary["routing"]["routed"] == 20
    assert summary["first_touch"]["improved"] == 20
    assert merged & set(read) == set()


def test_steps_run_one_by_one_read_the_ledger(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside ``process()`` (the ops of process_cdc_batch, a step retried in a new
    process) nothing is handed over: each step reads the states from the ledger, so it sees
    what another writer committed after the merge, and gives the same facts."""
    batch = _batch()
    whole = new_ledger("whole")
    make_processor(whole).process(batch)

    ledger = new_ledger("steps")
    processor = make_processor(ledger)
    processor.apply_records(batch)  # a merge inside no process(): nothing kept
    read = _spy_reads(ledger, monkeypatch)
    routing = processor.route_leads(processor.select_routing(batch))
    processor.detect_first_touch(**processor.select_first_touch(batch))
    processor.recommend_templates(routing_summary=routing, **processor.select_templates(batch))

    leads = {(LEAD, e.record_ids[0]) for e in batch if e.entity == LEAD}
    tasks = {(TASK, e.record_ids[0]) for e in batch if e.entity == TASK}
    assert leads | tasks <= set(read)
    pd.testing.assert_frame_equal(
        facts_by_id(ledger).drop(columns="updated_at", errors="ignore"),
        facts_by_id(whole).drop(columns="updated_at", errors="ignore"),
    )


def test_a_failed_merge_hands_nothing_over(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge whose transaction fails leaves ``process()`` with its error; the next call
    reads the ledger as it is (nothing of the failed merge is handed over)."""
    ledger = new_ledger()
    processor = make_processor(ledger)
    batch = _batch(5)
    original = ledger.save_records

    def failing(conn: sa.Connection, states: Iterable[object]) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(ledger, "save_records", failing)
    with pytest.raises(sa.exc.OperationalError):
        processor.process(batch)
    assert ledger.record(LEAD, batch[0].record_ids[0]) is None

    monkeypatch.setattr(ledger, "save_records", original)
    read = _spy_reads(ledger, monkeypatch)
    routing = processor.route_leads(processor.select_routing(batch))
    assert routing["routed"] == 0 and routing["unknown"] == 5  # read: nothing was stored
    assert {(LEAD, e.record_ids[0]) for e in batch if e.entity == LEAD} <= set(read)
    assert processor.process(batch)["routing"]["routed"] == 5
