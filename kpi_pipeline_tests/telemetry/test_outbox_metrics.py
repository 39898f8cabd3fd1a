"""/metrics carries the write-back outbox's state, read from a real ledger (SQLite file and
PostgreSQL) on each scrape; an unreadable ledger costs those series, never the scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.telemetry import metrics
from kpi_pipeline.telemetry.exposition import build_registry
from kpi_pipeline_tests.support.metrics_server import parse_exposition, start_metrics_server
from kpi_pipeline_tests.support.outbox_rows import MovableClock, claim, fail_for_good, queue

GAUGES = (
    "writeback_outbox_rows",
    "writeback_oldest_pending_age_seconds",
    "writeback_oldest_claimed_age_seconds",
    "writeback_expired_claims",
)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def ledger(ledger_url: str, clock: MovableClock) -> Iterator[Ledger]:
    opened = Ledger.from_url(ledger_url, clock=clock)
    yield opened
    opened.dispose()


def scrape(registry: CollectorRegistry) -> dict:
    return parse_exposition(generate_latest(registry).decode())


def test_rows_by_status_ages_and_expired_claims(ledger: Ledger, clock: MovableClock) -> None:
    opened: list[int] = []

    def open_ledger() -> Ledger:
        opened.append(1)
        return ledger

    app = build_registry(metrics.metrics_dir(), open_ledger)
    assert opened == []  # nothing touches the ledger before the first scrape

    empty = scrape(app)
    for status in ("pending", "claimed", "sent", "failed"):
        assert empty[("writeback_outbox_rows", (("status", status),))] == 0
    assert empty[("writeback_oldest_pending_age_seconds", ())] == 0
    assert empty[("writeback_expired_claims", ())] == 0

    queue(ledger, ["00Q000000000001AAA", "00Q000000000002AAA", "00Q000000000003AAA"])
    clock.advance(120)
    claimed = claim(ledger, 1)
    clock.advance(30)
    samples = scrape(app)
    assert samples[("writeback_outbox_rows", (("status", "pending"),))] == 2
    assert samples[("writeback_outbox_rows", (("status", "claimed"),))] == 1
    assert samples[("writeback_oldest_pending_age_seconds", ())] == pytest.approx(150, abs=1)
    assert samples[("writeback_oldest_claimed_age_seconds", ())] == pytest.approx(30, abs=1)
    assert samples[("writeback_expired_claims", ())] == 0

    clock.advance(600)  # longer than any lease: the drainer holding the claim died
    samples = scrape(app)
    assert samples[("writeback_expired_claims", ())] == 1

    fail_for_good(ledger, claimed)
    samples = scrape(app)
    assert samples[("writeback_outbox_rows", (("status", "failed"),))] == 1
    assert samples[("writeback_outbox_rows", (("status", "claimed"),))] == 0
    assert samples[("writeback_oldest_claimed_age_seconds", ())] == 0
    assert opened == [1]  # opened once, then reused by every scrape


def test_scrapes_stay_fast_with_a_backlog(ledger: Ledger) -> None:
    queue(ledger, [f"00Q{n:012d}AAA" for n in range(2000)])
    claim(ledger, 200)
    app = build_registry(metrics.metrics_dir(), lambda: ledger)
    scrape(app)  # the first scrape opens connections
    durations = []
    for _ in range(40):
        start = time.perf_counter()
        scrape(app)
        durations.append(time.perf_counter() - start)
    p95 = sorted(durations)[int(len(durations) * 0.95) - 1]
    assert p95 < 0.1, f"p95 scrape {p95 * 1000:.1f} ms"


def test_an_unreadable_ledger_leaves_its_series_out_and_counts_an_error(tmp_path: Path) -> None:
    attempts: list[int] = []

    def broken() -> Ledger:
        attempts.append(1)
        # A directory where the SQLite file should be: the ledger cannot be opened.
        (tmp_path / "ledger.db").mkdir(exist_ok=True)
        return Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")

    metrics.initialise_known_series()
    app = build_registry(metrics.metrics_dir(), broken)
    errors_before = scrape(build_registry(metrics.metrics_dir()))[
        ("errors_total", (("area", "metrics"),))
    ]
    samples = scrape(app)
    assert not [key for key in samples if key[0] in GAUGES]
    assert "cdc_events_total" in {key[0] for key in samples}  # the rest of the scrape is there
    assert samples[("errors_total", (("area", "metrics"),))] == errors_before + 1
    scrape(app)
    assert len(attempts) == 2  # tried again on the next scrape, not given up


@pytest.mark.postgres
def test_the_served_endpoint_reads_the_configured_ledger(
    metrics_dir: Path, make_postgres_db: Callable[[], str]
) -> None:
    url = make_postgres_db()
    ledger = Ledger.from_url(url)
    queue(ledger, ["00Q000000000001AAA", "00Q000000000002AAA"])
    ledger.dispose()
    server = start_metrics_server(metrics_dir, ledger_url=url)
    try:
        samples = parse_exposition(server.scrape())
    finally:
        server.stop()
    assert samples[("writeback_outbox_rows", (("status", "pending"),))] == 2
    assert samples[("writeback_oldest_pending_age_seconds", ())] >= 0
