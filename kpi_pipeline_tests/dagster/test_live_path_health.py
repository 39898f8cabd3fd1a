"""The live_path_health check over a real ledger (SQLite and PostgreSQL): stuck batches, and in
stream mode whether a cdc_stream run holds every channel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kpi_pipeline import wiring
from kpi_pipeline.cdc.raw import RawEvent
from kpi_pipeline.defs.checks import live_path_health
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.ledger import Ledger

LEAD_CH = "/data/LeadChangeEvent"
CHANNELS = "/data/LeadChangeEvent,/data/TaskChangeEvent"


@pytest.fixture
def pipeline(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PipelineResource]:
    monkeypatch.setenv("KPI_CDC_CHANNELS", CHANNELS)
    monkeypatch.setenv("KPI_CDC_PROCESSING_ALERT_SECONDS", "300")
    wiring.reset_cache()
    yield PipelineResource(data_dir=str(tmp_path / "kpi"), ledger_url=ledger_url)
    wiring.reset_cache()


def _ledger_at(url: str, minutes_ago: float) -> Ledger:
    then = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return Ledger.from_url(url, clock=lambda: then)


def _stage(ledger: Ledger) -> None:
    event = RawEvent(LEAD_CH, (7).to_bytes(8, "big"), "schema-1", b"\x00")
    ledger.stage_batch(LEAD_CH, [event], {"schema-1": '"null"'})


def test_sensor_mode_fails_on_a_stuck_batch_only(pipeline: PipelineResource, ledger_url) -> None:
    assert live_path_health(pipeline=pipeline).passed
    _stage(_ledger_at(ledger_url, 1))  # waiting a minute: processing is on its way
    recent = live_path_health(pipeline=pipeline)
    assert recent.passed
    assert recent.metadata["channels"].value[LEAD_CH]["pending_batches"] == 1
    assert recent.metadata["channels"].value[LEAD_CH]["stream_alive"] is None


def test_a_batch_pending_past_the_limit_fails_the_check(
    pipeline: PipelineResource, ledger_url
) -> None:
    _stage(_ledger_at(ledger_url, 10))
    result = live_path_health(pipeline=pipeline)
    assert not result.passed
    assert "1 batch(es) pending" in result.description and LEAD_CH in result.description


def test_stream_mode_fails_when_no_stream_run_holds_a_channel(
    pipeline: PipelineResource, ledger_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    channels = CHANNELS.split(",")
    nobody = live_path_health(pipeline=pipeline)
    assert not nobody.passed and "no cdc_stream run holds it" in nobody.description

    # A run killed three minutes ago: its leases expired long since and nobody took over.
    _ledger_at(ledger_url, 3).acquire_leases("run-0", channels, ttl=timedelta(seconds=30))
    gone = live_path_health(pipeline=pipeline)
    assert not gone.passed
    assert gone.description.count("no cdc_stream run holds it") == 2

    ledger = pipeline.ledger()  # the next generation takes the expired leases over
    assert ledger.acquire_leases("run-1", channels, ttl=timedelta(seconds=30)) == set(channels)
    alive = live_path_health(pipeline=pipeline)
    assert alive.passed
    assert alive.metadata["channels"].value[LEAD_CH]["lease_holder"] == "run-1"

    ledger.release_leases("run-1")  # a generation handing over: still healthy for a while
    assert live_path_health(pipeline=pipeline).passed
