"""The live_path_health check over a real ledger (SQLite and PostgreSQL) and a real Dagster
instance: stuck batches, and in stream mode whether a live cdc_stream run holds every
channel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.defs.cdc.checks import live_path_health
from kpi_pipeline.defs.resources import PipelineResource

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


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _check(pipeline: PipelineResource, instance: dg.DagsterInstance) -> dg.AssetCheckResult:
    return live_path_health(dg.build_asset_check_context(instance=instance), pipeline=pipeline)


def _ledger_at(url: str, minutes_ago: float) -> Ledger:
    then = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return Ledger.from_url(url, clock=lambda: then)


def _stage(ledger: Ledger) -> None:
    event = RawEvent(LEAD_CH, (7).to_bytes(8, "big"), "schema-1", b"\x00")
    ledger.stage_batch(LEAD_CH, [event], {"schema-1": '"null"'})


def test_sensor_mode_fails_on_a_stuck_batch_only(
    pipeline: PipelineResource, ledger_url, instance
) -> None:
    assert _check(pipeline, instance).passed
    _stage(_ledger_at(ledger_url, 1))  # waiting a minute: processing is on its way
    recent = _check(pipeline, instance)
    assert recent.passed
    assert recent.metadata["channels"].value[LEAD_CH]["pending_batches"] == 1
    assert recent.metadata["channels"].value[LEAD_CH]["stream_alive"] is None


def test_a_batch_pending_past_the_limit_fails_the_check(
    pipeline: PipelineResource, ledger_url, instance
) -> None:
    _stage(_ledger_at(ledger_url, 10))
    result = _check(pipeline, instance)
    assert not result.passed
    assert "1 batch(es) pending" in result.description and LEAD_CH in result.description


def test_stream_mode_fails_when_no_stream_run_holds_a_channel(
    pipeline: PipelineResource, ledger_url, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    channels = CHANNELS.split(",")
    nobody = _check(pipeline, instance)
    assert not nobody.passed and "no live cdc_stream run holds it" in nobody.description

    # A run killed three minutes ago: its leases expired long since and nobody took over.
    _ledger_at(ledger_url, 3).acquire_leases("run-0", channels, ttl=timedelta(seconds=30))
    gone = _check(pipeline, instance)
    assert not gone.passed
    assert gone.description.count("no live cdc_stream run holds it") == 2

    ledger = pipeline.ledger()  # the next generation takes the expired leases over
    assert ledger.acquire_leases("run-1", channels, ttl=timedelta(seconds=30)) == set(channels)
    alive = _check(pipeline, instance)
    assert alive.passed
    assert alive.metadata["channels"].value[LEAD_CH]["lease_holder"] == "run-1"

    ledger.release_leases("run-1")  # a generation handing over: still healthy for a while
    assert _check(pipeline, instance).passed


def test_a_holder_whose_run_failed_is_not_alive_before_its_lease_runs_out(
    pipeline: PipelineResource, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed stream run's lease is still unexpired for a while; once run monitoring has
    failed the run, the check says so at once instead of waiting out lease and grace."""
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    run = instance.add_run(
        dg.DagsterRun(
            job_name="cdc_stream", run_id="run-killed", status=dg.DagsterRunStatus.STARTED
        )
    )
    pipeline.ledger().acquire_leases(run.run_id, CHANNELS.split(","), ttl=timedelta(minutes=5))
    assert _check(pipeline, instance).passed

    instance.report_run_failed(run)
    dead = _check(pipeline, instance)
    assert not dead.passed
    assert dead.description.count("no live cdc_stream run holds it") == 2
