"""The re-sync tests' pipeline (fixtures ``open_pipeline`` and ``pipeline``): the sandbox org's REST server over a SQLite store, a real ledger, a processor.

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
from typing import Any

import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger.resync_windows import LedgerResyncWindows
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.resync import (
    ResyncReport,
    resync_open_windows,
)
from kpi_pipeline.core.events import ChangeEvent, replay_id_from_int
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.sandbox.store import (
    INBOUND_QUEUE,
    INTEGRATION_USER_ID,
    recorded_message,
)
from kpi_pipeline_tests.support.ledgers import NewLedger
from kpi_pipeline_tests.support.processors import make_processor, wall_clock
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg, sandbox_org

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

    @property
    def windows(self) -> LedgerResyncWindows:
        """The re-sync's port over this pipeline's ledger."""
        return LedgerResyncWindows(self.ledger)

    def resync(self, now: datetime | None = None, **kwargs) -> list[ResyncReport]:
        return resync_open_windows(
            self.windows,
            self.org.rest(),
            self.processor,
            now=now or datetime.now(UTC),
            **kwargs,
        )

    def queries(self) -> list[str]:
        return [r.path for r in self.org.server.received if r.path.rstrip("/").endswith("/query")]


@pytest.fixture
def open_pipeline(tmp_path: Path, new_ledger: NewLedger) -> Iterator[Callable[[str], Pipeline]]:
    """Factory: a pipeline over a ledger at the given URL ('' = a SQLite file), its processor
    on the wall clock as the live job runs it."""
    with sandbox_org(tmp_path) as org:

        def make(url: str = "") -> Pipeline:
            ledger = new_ledger(url=url)
            return Pipeline(org, ledger, make_processor(ledger, clock=wall_clock))

        yield make


@pytest.fixture
def pipeline(open_pipeline: Callable[[str], Pipeline]) -> Pipeline:
    return open_pipeline("")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pipeline_on_each_ledger(
    open_pipeline: Callable[[str], Pipeline], request: pytest.FixtureRequest
) -> Pipeline:
    """A pipeline over a SQLite ledger, then (a second test) over a PostgreSQL one."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return open_pipeline(url)


def gap_window(
    ledger: Ledger,
    lead_id: str | None = None,
    *,
    from_replay: int,
    at_ms: int,
    detail: dict[str, Any] | None = None,
) -> int:
    """The re-sync window a gap event for one lead opens on the Lead channel (its id).
    ``detail``, when given, stands instead of the one that names the lead."""
    return ledger.record_resync_window(
        ResyncGap(
            channel="/data/LeadChangeEvent",
            reason="gap",
            from_replay=replay_id_from_int(from_replay),
            from_time_ms=at_ms,
            to_time_ms=at_ms,
            detail={"entity": "Lead", "record_ids": [lead_id]} if detail is None else detail,
        )
    )


def refused_window(
    ledger: Ledger,
    channel: str,
    *,
    from_replay: int,
    from_time_ms: int | None,
    detail: dict | None = None,
) -> int:
    """The open-ended re-sync window recorded when Pub/Sub refused the stored replay id."""
    return ledger.record_resync_window(
        ResyncGap(
            channel=channel,
            reason="replay_id_invalid",
            from_replay=replay_id_from_int(from_replay),
            from_time_ms=from_time_ms,
            to_time_ms=None,
            detail=detail or {},
        )
    )


def create_lead(pipeline: Pipeline, at_ms: int, **values) -> str:
    fields = {
        "LastName": "Gap",
        "Company": "Small Co",
        "LeadSource": "Web",
        "Status": "Open",
        "NumberOfEmployees": 20,
        "OwnerId": INBOUND_QUEUE.id,
    }
    fields.update(values)
    return pipeline.org.store.create_record(
        "Lead", fields, user_id=INTEGRATION_USER_ID, at_ms=at_ms
    )


def facts(pipeline: Pipeline, lead_id: str) -> pd.Series:
    return pipeline.ledger.lead_facts_frame().set_index("Id").loc[lead_id]


def ledger_snapshot(pipeline: Pipeline) -> tuple:
    ledger = pipeline.ledger
    frame = ledger.lead_facts_frame().drop(columns=["updated_at"], errors="ignore")
    with ledger.read() as conn:
        states = ledger.records(
            conn, [(s, r) for s in ("Lead", "Task") for r in _record_ids(pipeline, s)]
        )
    return (
        frame.sort_values("Id").to_json(orient="records", date_format="iso"),  # NaN-safe
        {k: v.to_json() for k, v in states.items()},
        len(ledger.outbox()),
    )


def _record_ids(pipeline: Pipeline, sobject: str) -> list[str]:
    return [r["Id"] for r in pipeline.org.store.query_records(sobject, include_deleted=True)]
