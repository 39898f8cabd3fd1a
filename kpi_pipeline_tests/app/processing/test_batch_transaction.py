"""One transaction per batch (``Ledger.one_transaction``): ``process()`` on a ledger whose
write transactions exclude each other (SQLite) runs the merge and every step in one
transaction with one batch-wide ``BatchWork``; on PostgreSQL each step commits its own."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger, bulk
from kpi_pipeline.adapters.ledger.batch_sql import _UPSERT_FACTS
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.selection import LEAD
from kpi_pipeline_tests.support.events import leads_with_tasks
from kpi_pipeline_tests.support.ledgers import NewLedger, facts_by_id
from kpi_pipeline_tests.support.processors import make_processor


def _batch(count: int = 12) -> list[ChangeEvent]:
    return leads_with_tasks(count)


def _count_commits(ledger: Ledger) -> list[int]:
    commits = [0]
    sa.event.listen(ledger.engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
    return commits


def _facts_rows_written(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    written: list[str] = []
    original = bulk.executemany

    def spy(conn: sa.Connection, statement: sa.TextClause, rows: list[dict]) -> None:
        if statement is _UPSERT_FACTS:
            written.extend(row["Id"] for row in rows)
        original(conn, statement, rows)

    monkeypatch.setattr(bulk, "executemany", spy)
    return written


def test_a_batch_is_one_transaction_and_each_facts_row_is_written_once(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = new_ledger()
    assert ledger.exclusive_writes
    commits = _count_commits(ledger)
    written = _facts_rows_written(monkeypatch)
    summary = make_processor(ledger).process(_batch())

    assert summary["routing"]["routed"] == 12 and summary["first_touch"]["improved"] == 12
    assert commits == [1]
    assert sorted(written) == sorted(set(written)) and len(written) == 12

    # The same facts as the steps run one by one, each in its own transaction.
    steps = new_ledger("steps")
    processor = make_processor(steps)
    batch = _batch()
    processor.apply_records(batch)
    routing = processor.route_leads(processor.select_routing(batch))
    processor.detect_first_touch(**processor.select_first_touch(batch))
    processor.recommend_templates(routing_summary=routing, **processor.select_templates(batch))
    pd.testing.assert_frame_equal(facts_by_id(ledger), facts_by_id(steps))
    assert [d.id for d in ledger.decisions_between()] == [d.id for d in steps.decisions_between()]


def test_a_step_that_fails_after_the_merge_rolls_the_whole_batch_back(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of a failed batch stays (not even its merge), so the retry starts clean and
    ends where a batch that never failed ends."""
    ledger = new_ledger()
    processor = make_processor(ledger)
    batch = _batch(5)
    original = ledger.template_recommendations

    def failing(conn: sa.Connection, lead_ids: Iterable[str]) -> dict[str, str]:
        raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(ledger, "template_recommendations", failing)
    with pytest.raises(sa.exc.OperationalError):
        processor.process(batch)
    assert ledger.record(LEAD, batch[0].record_ids[0]) is None
    assert ledger.decisions_between() == []
    assert ledger.lead_facts_frame().empty

    monkeypatch.setattr(ledger, "template_recommendations", original)
    processor.process(batch)
    clean = new_ledger("clean")
    make_processor(clean).process(batch)
    pd.testing.assert_frame_equal(facts_by_id(ledger), facts_by_id(clean))
    assert [d.id for d in ledger.decisions_between()] == [d.id for d in clean.decisions_between()]


def test_a_dead_lettered_lead_is_undone_in_the_batch_wide_work(
    new_ledger: NewLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lead whose routing fails is rolled back inside the shared BatchWork (its facts row
    as the merge left it, not written by routing) while the others are routed."""
    ledger = new_ledger()
    processor = make_processor(ledger)
    batch = _batch(4)
    poison = batch[2].record_ids[0]
    original = processor.routing._route_one

    def route_one(work, state, *args):  # type: ignore[no-untyped-def]
        if state.record_id == poison:
            raise RuntimeError("policy rule crashed")
        return original(work, state, *args)

    monkeypatch.setattr(processor.routing, "_route_one", route_one)
    summary = processor.process(batch)
    assert summary["routing"]["routed"] == 3 and summary["routing"]["dead_lettered"] == 1
    facts = ledger.lead_facts_frame().set_index("Id")
    assert facts.loc[poison, "Routing_Rule__c"] is None
    assert facts.drop(index=poison)["Routing_Rule__c"].notna().all()
    assert [d.stage for d in ledger.dead_letters()] == ["route_leads"]


@pytest.mark.postgres
def test_on_postgresql_each_step_commits_its_own_transaction(postgres_url: str) -> None:
    ledger = Ledger.from_url(postgres_url)
    try:
        assert not ledger.exclusive_writes
        commits = _count_commits(ledger)
        make_processor(ledger).process(_batch(3))
        assert commits[0] >= 4  # the merge and the three workload steps
        with pytest.raises(Exception, match="exclude each other"), ledger.one_transaction():
            pass
    finally:
        ledger.dispose()
