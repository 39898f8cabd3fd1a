"""A re-sync window is applied a page at a time as it is read over REST, so memory stays
bounded by a page whatever the window's size (an outage past the org's event retention
re-reads every record modified since), and the next page is read while one is applied
(``read_ahead``). The owner-history fallback is still said once a window, not once a page."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from kpi_pipeline.app.resync import EVENTS_PER_PROCESS_CALL, read_ahead, resync_open_windows
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID, REP_USER_IDS
from kpi_pipeline.telemetry import metrics
from kpi_pipeline_tests.support.resync_pipeline import (
    MINUTE,
    T0,
    Pipeline,
    create_lead,
    refused_window,
)

PAGE = 200  # the org's page size in these tests (a real org's default is 2,000)


class WatchedProcessor:
    """The pipeline's processor, noting how many Lead pages the org had served at each call."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.calls: list[tuple[int, int]] = []  # (Lead record pages served, events)

    def process(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        self.calls.append((lead_pages(self.pipeline), len(events)))
        return self.pipeline.processor.process(events)


def lead_pages(pipeline: Pipeline) -> int:
    """Pages of the Lead query the org served so far: the first, and each one fetched by
    its query locator (``query/01g...``); only that query has more than one page here."""
    paths = [r.path for r in pipeline.org.server.received]
    served_first = any(p.rstrip("/").endswith("/query") for p in paths)
    return served_first + sum("/query/01g" in p for p in paths)


def created_leads(pipeline: Pipeline, count: int) -> list[str]:
    store = pipeline.org.store
    with store.transaction(at_ms=T0) as tx:
        return [
            store.create_record(
                "Lead",
                {"LastName": f"L{i}", "Company": "C", "OwnerId": REP_USER_IDS[0]},
                user_id=INTEGRATION_USER_ID,
                transaction=tx,
            )
            for i in range(count)
        ]


def test_a_large_window_is_applied_while_it_is_still_being_read(pipeline: Pipeline) -> None:
    pipeline.org.server.app.query_batch_size = PAGE
    leads = created_leads(pipeline, 15 * PAGE)
    pipeline.skip_delivery()  # none of it reached the pipeline: the replay id expired
    refused_window(
        pipeline.ledger, "/data/LeadChangeEvent", from_replay=1, from_time_ms=T0 - MINUTE
    )
    processor = WatchedProcessor(pipeline)

    [report] = resync_open_windows(
        pipeline.windows, pipeline.org.rest(), processor, now=datetime.now(UTC)
    )

    assert (report.status, report.records_read) == ("closed", len(leads)), report.error
    assert lead_pages(pipeline) == 15
    # The first batch of events went to the processor when the pages it came from, and the
    # one read ahead, had been served: not after the whole window was in memory.
    pages_when_first_applied, first_batch = processor.calls[0]
    assert first_batch == EVENTS_PER_PROCESS_CALL
    assert pages_when_first_applied <= EVENTS_PER_PROCESS_CALL // PAGE + 1
    assert sum(n for _, n in processor.calls) == report.events_applied == len(leads)
    assert set(pipeline.ledger.lead_facts_frame()["Id"]) == set(leads)


def test_no_owner_history_is_said_once_a_window_however_many_pages(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline.org.server.app.query_batch_size = 2
    pipeline.org.store.track_owner_history = False  # the LeadHistory queries answer no row
    for minute in range(5):
        create_lead(pipeline, T0 + minute * MINUTE)
    pipeline.skip_delivery()
    refused_window(
        pipeline.ledger, "/data/LeadChangeEvent", from_replay=1, from_time_ms=T0 - MINUTE
    )
    before = metrics.sample_value("errors_total", {"area": "resync_owner_history"})

    with caplog.at_level(logging.WARNING, logger="kpi_pipeline.app.resync"):
        [report] = pipeline.resync()

    assert report.status == "closed", report.error
    assert lead_pages(pipeline) == 3
    warnings = [r.getMessage() for r in caplog.records if "no owner history" in r.message]
    assert len(warnings) == 1 and "any of the 5 re-read lead(s)" in warnings[0]
    assert metrics.sample_value("errors_total", {"area": "resync_owner_history"}) == before + 1


def test_owner_history_on_a_later_page_is_enough(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Pages of leads that never changed owner say nothing when another page's leads did."""
    pipeline.org.server.app.query_batch_size = 2
    leads = [create_lead(pipeline, T0 + minute * MINUTE) for minute in range(5)]
    pipeline.org.store.update_record(
        "Lead",
        leads[-1],
        {"OwnerId": REP_USER_IDS[0]},
        user_id=REP_USER_IDS[1],
        at_ms=T0 + 9 * MINUTE,
    )
    pipeline.skip_delivery()
    refused_window(
        pipeline.ledger, "/data/LeadChangeEvent", from_replay=1, from_time_ms=T0 - MINUTE
    )

    with caplog.at_level(logging.WARNING, logger="kpi_pipeline.app.resync"):
        [report] = pipeline.resync()

    assert report.status == "closed", report.error
    assert not [r for r in caplog.records if "no owner history" in r.message]


# --- read_ahead ---------------------------------------------------------------------------


class Source:
    """Items 0..n-1, noting how many were produced; ``fail_at`` raises instead of that one."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.produced = 0
        self.threads: set[str] = set()

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.threads.add(threading.current_thread().name)
            if i == self.fail_at:
                raise ConnectionError(f"page {i} could not be read")
            self.produced += 1
            yield i


def test_read_ahead_keeps_the_order_and_reads_one_item_ahead() -> None:
    source = Source(6)
    seen = []
    for item in read_ahead(iter(source)):
        time.sleep(0.02)  # the caller's work: the reader has time to run ahead if it would
        seen.append((item, source.produced))
    assert [item for item, _ in seen] == list(range(6))
    assert all(produced <= item + 2 for item, produced in seen)  # this one and the next
    assert any(produced == item + 2 for item, produced in seen[:-1])  # it did read ahead
    assert source.threads and threading.current_thread().name not in source.threads


def test_read_ahead_raises_a_read_error_where_it_happened() -> None:
    seen = []
    with pytest.raises(ConnectionError, match="page 3"):
        for item in read_ahead(iter(Source(6, fail_at=3))):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_read_ahead_stops_reading_when_the_caller_stops() -> None:
    source = Source(100)
    items = read_ahead(iter(source))
    assert next(items) == 0
    items.close()  # the caller failed on item 0: the window stays open
    assert source.produced <= 2
