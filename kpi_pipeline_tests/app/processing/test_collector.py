"""The cyclic garbage collector is paused while ``BatchProcessor.process`` runs a batch and
resumed after it, also when the batch fails (``collector.py``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline_tests.support.events import leads_with_tasks
from kpi_pipeline_tests.support.ledgers import NewLedger
from kpi_pipeline_tests.support.processors import make_processor


@pytest.fixture(autouse=True)
def collector_running() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_the_collector_is_paused_during_a_batch_and_runs_after_it(new_ledger: NewLedger) -> None:
    seen: list[bool] = []

    def clock() -> datetime:  # stamps each decision: called in the middle of the batch
        seen.append(gc.isenabled())
        return datetime.now(UTC)

    summary = make_processor(new_ledger(), clock=clock).process(leads_with_tasks(5))

    assert summary["routing"]["routed"] == 5
    assert seen and not any(seen)
    assert gc.isenabled()


def test_a_failed_batch_resumes_the_collector(new_ledger: NewLedger) -> None:
    ledger: Ledger = new_ledger()
    processor = make_processor(ledger)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE records")  # the merge's read fails
    with pytest.raises(Exception, match="records"):
        processor.process(leads_with_tasks(1))
    assert gc.isenabled()
