"""Fixtures: the sandbox org's REST server over a SQLite store, a real ledger, a processor.

Changes are made in the sandbox store; ``Pipeline.deliver`` hands the change events the
store published (as CDC would) to the processor, so a test controls exactly which changes
reached the pipeline and which only the org knows about (gaps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.resync import ResyncReport, resync_open_windows
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.outreach_templates import LocalRanker, load_catalog
from kpi_pipeline.sandbox.store import recorded_message
from kpi_pipeline_tests.processing.conftest import CLIENT_ID, TEST_POLICY
from kpi_pipeline_tests.salesforce.sandbox_org import SandboxOrg, sandbox_org

MINUTE = 60_000
# An hour ago, on a whole second: the org's changes in these tests happen after it.
T0 = (time.time_ns() // 1_000_000 // 1000) * 1000 - 60 * MINUTE


@dataclass
class Pipeline:
    org: SandboxOrg
    ledger: Ledger
    processor: BatchProcessor
    delivered: int = 0  # replay id of the last change handed to the processor
    rest_calls: list[str] = field(default_factory=list)

    def deliver(self) -> list[ChangeEvent]:
        """Process every change the org published since the last delivery, as CDC would."""
        events = [
            ChangeEvent.from_recorded(recorded_message(c, f"/data/{c.entity}ChangeEvent"))
            for c in self.org.store.iter_changes(self.delivered)
        ]
        if events:
            self.delivered = events[-1].replay_int
            self.processor.process(events)
        return events

    def skip_delivery(self) -> None:
        """Changes so far never reach the pipeline (lost in a gap)."""
        self.delivered = self.org.store.latest_replay()

    def resync(self, now: datetime | None = None, **kwargs) -> list[ResyncReport]:
        return resync_open_windows(
            self.ledger,
            self.org.rest(),
            self.processor,
            now=now or datetime.now(UTC),
            **kwargs,
        )

    def queries(self) -> list[str]:
        return [r.path for r in self.org.server.received if r.path.rstrip("/").endswith("/query")]


def make_processor(ledger: Ledger) -> BatchProcessor:
    # The wall clock, as the live job runs it (kpi_pipeline.wiring.batch_processor).
    return BatchProcessor(
        ledger,
        TEST_POLICY,
        selector=LocalRanker(),
        catalog=load_catalog(),
        client_id=CLIENT_ID,
        clock=lambda: datetime.now(UTC),
    )


@pytest.fixture
def open_pipeline(tmp_path: Path) -> Iterator[Callable[[str], Pipeline]]:
    """Factory: a pipeline over a ledger at the given URL ('' = a SQLite file)."""
    with sandbox_org(tmp_path) as org:
        ledgers: list[Ledger] = []

        def make(url: str = "") -> Pipeline:
            ledger = Ledger.from_url(url or f"sqlite:///{tmp_path / 'ledger.db'}")
            ledgers.append(ledger)
            return Pipeline(org, ledger, make_processor(ledger))

        yield make
        for ledger in ledgers:
            ledger.dispose()


@pytest.fixture
def pipeline(open_pipeline: Callable[[str], Pipeline]) -> Pipeline:
    return open_pipeline("")
