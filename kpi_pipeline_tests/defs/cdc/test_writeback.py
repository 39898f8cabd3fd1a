"""The outbox_backlog check, writeback_sensor and the writeback_drain job over a real ledger
(SQLite file and PostgreSQL), a real Dagster instance and, for the drain, the sandbox org."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.defs.cdc.checks import outbox_backlog
from kpi_pipeline.defs.cdc.writeback import writeback_drain, writeback_sensor
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline_tests.support.outbox_rows import claim, fail_for_good, queue

LEADS = ["00Q000000000001AAA", "00Q000000000002AAA"]


@pytest.fixture
def pipeline(ledger_url: str, tmp_path: Path) -> Iterator[PipelineResource]:
    wiring.reset_cache()
    yield PipelineResource(data_dir=str(tmp_path / "kpi"), ledger_url=ledger_url)
    wiring.reset_cache()


def ledger_at(url: str, minutes_ago: float) -> Ledger:
    """The ledger as a process would have written it `minutes_ago` (rows then look that old
    to the code under test, which reads with the wall clock)."""
    then = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return Ledger.from_url(url, clock=lambda: then)


def queued_long_ago(url: str) -> Ledger:
    """LEADS queued 20 minutes ago: the ledger that queued them (its clock still then)."""
    old = ledger_at(url, 20)
    queue(old, LEADS)
    return old


# --- outbox_backlog ---------------------------------------------------------------------------
def test_backlog_check_passes_on_an_outbox_that_keeps_up(
    pipeline: PipelineResource, ledger_url: str
) -> None:
    assert outbox_backlog(pipeline=pipeline).passed  # empty
    queue(ledger_at(ledger_url, 1), LEADS)  # waiting for a minute: well within the limit
    result = outbox_backlog(pipeline=pipeline)
    assert result.passed
    assert result.metadata["by_status"].value["pending"] == 2
    assert result.metadata["backlog"].value == 2
    assert result.metadata["expired_claims"].value == 0
    assert 50 < result.metadata["oldest_pending_age_seconds"].value < 120


def test_backlog_check_fails_on_old_rows_expired_claims_and_failed_rows(
    pipeline: PipelineResource, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_WRITEBACK_BACKLOG_ALERT_SECONDS", "600")
    old = queued_long_ago(ledger_url)
    result = outbox_backlog(pipeline=pipeline)
    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert "oldest pending row waited" in result.description

    claim(old, 1)  # a drainer took a row 20 minutes ago and died holding it
    result = outbox_backlog(pipeline=pipeline)
    assert not result.passed
    assert result.metadata["expired_claims"].value == 1
    assert "outlived their lease" in result.description

    fresh = Ledger.from_url(ledger_url)
    other = "00Q000000000009AAA"
    queue(fresh, [other])
    monkeypatch.setenv("KPI_WRITEBACK_BACKLOG_ALERT_SECONDS", "3600")
    rows = claim(fresh, 10)  # retakes the expired claim too
    fail_for_good(fresh, rows)
    result = outbox_backlog(pipeline=pipeline)
    assert not result.passed
    assert result.metadata["by_status"].value["failed"] == 3
    assert result.description.startswith("3 row(s) failed for good")


# --- writeback_sensor -------------------------------------------------------------------------
def tick(instance: dg.DagsterInstance, pipeline: PipelineResource) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline})
    return writeback_sensor(context)


def test_sensor_requests_a_drain_for_rows_left_waiting_once_at_a_time(
    pipeline: PipelineResource, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_WRITEBACK_IDLE_DRAIN_SECONDS", "30")
    with dg.instance_for_test() as instance:
        assert not tick(instance, pipeline).run_requests  # empty outbox

        queue(Ledger.from_url(ledger_url), LEADS)  # just queued: a batch run may still drain them
        result = tick(instance, pipeline)
        assert not result.run_requests and "keeps up" in result.skip_reason.skip_message

        queue(ledger_at(ledger_url, 2), ["00Q000000000003AAA"])  # waiting for two minutes
        (request,) = tick(instance, pipeline).run_requests
        assert "oldest pending row waited" in request.tags["kpi/reason"]
        assert request.tags["kpi/backlog"] == "3"

        # While a drain run is queued or going, no second one.
        running = instance.add_run(
            dg.DagsterRun(
                job_name="writeback_drain",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
            )
        )
        result = tick(instance, pipeline)
        assert not result.run_requests and "under way" in result.skip_reason.skip_message
        instance.report_run_failed(running)
        assert len(tick(instance, pipeline).run_requests) == 1


def test_sensor_retakes_expired_claims_without_traffic(
    pipeline: PipelineResource, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_WRITEBACK_IDLE_DRAIN_SECONDS", "3600")
    old = queued_long_ago(ledger_url)
    claim(old, 2)  # the run worker holding these was killed
    with dg.instance_for_test() as instance:
        (request,) = tick(instance, pipeline).run_requests
    assert request.tags["kpi/reason"] == "2 claim(s) outlived their lease"


def test_sensor_skips_when_write_back_is_disabled(
    pipeline: PipelineResource, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_WRITEBACK_ENABLED", "false")
    queued_long_ago(ledger_url)
    with dg.instance_for_test() as instance:
        result = tick(instance, pipeline)
    assert not result.run_requests and "disabled" in result.skip_reason.skip_message


def test_definitions_register_the_drain_sensor_and_check() -> None:
    from kpi_pipeline.definitions import defs

    assert defs().resolve_job_def("writeback_drain") is not None
    sensor = defs().resolve_sensor_def("writeback_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "writeback_drain"
    graph = defs().resolve_asset_graph()
    check = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey("lead_ledger"), "outbox_backlog"))
    assert not check.blocking


def test_drain_job_does_nothing_when_disabled(
    pipeline: PipelineResource, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_WRITEBACK_ENABLED", "false")
    queue(Ledger.from_url(ledger_url), LEADS)
    result = writeback_drain.execute_in_process(resources={"pipeline": pipeline})
    assert result.success
    assert result.output_for_node("drain_outbox") == {"enabled": False}
    assert Ledger.from_url(ledger_url).outbox_health().by_status["pending"] == 2
