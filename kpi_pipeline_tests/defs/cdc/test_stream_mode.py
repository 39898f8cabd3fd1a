"""Stream mode in one process: the cdc_stream run against the sandbox org (real gRPC and REST
on loopback), the sensor keeping one stream run alive, one consumer per channel, and
switching between sensor and stream mode without losing or doubling anything."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.core.cursor import SensorCursor
from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.sandbox.store import QUEUE_IDS, SandboxStore
from kpi_pipeline_tests.support.sandbox_pipeline import run_processing

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)

pytestmark = pytest.mark.integration


@pytest.fixture
def sandbox_env() -> dict[str, str]:
    """Leases of 3 s, so a takeover fits a short test."""
    return {"KPI_CDC_STREAM_LEASE_SECONDS": "3"}


def _org_changes(pipeline: PipelineResource) -> int:
    store = SandboxStore(pipeline.settings().sandbox_store_path)
    try:
        return sum(1 for _ in store.iter_changes())
    finally:
        store.close()


def _staged(pipeline: PipelineResource) -> int:
    """Events in the inbox; its key is (channel, replay id), so none is there twice."""
    with pipeline.ledger().read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.cdc_inbox)).scalar_one()


def _run_stream(pipeline: PipelineResource, instance, seconds: float) -> dict:
    result = (
        defs()
        .resolve_job_def("cdc_stream")
        .execute_in_process(
            run_config={"ops": {"stream_cdc": {"config": {"lifetime_seconds": seconds}}}},
            instance=instance,
            resources={"pipeline": pipeline},
        )
    )
    assert result.success
    return result.output_for_node("stream_cdc")


def _add_queue_lead(pipeline: PipelineResource) -> str:
    store = SandboxStore(pipeline.settings().sandbox_store_path)
    try:
        return store.create_record(
            "Lead",
            {"LastName": "Stream", "Company": "Live Co", "OwnerId": QUEUE_IDS[0], "Status": "Open"},
            user_id="0055g0000000001AAA",
        )
    finally:
        store.close()


def test_a_stream_generation_stages_processes_and_writes_back(small_sandbox) -> None:
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        pipeline.ledger()  # start the sandbox (seeded) before counting its changes
        wiring.org_connection(pipeline.settings())
        seeded = _org_changes(pipeline)
        summary = _run_stream(pipeline, instance, 8.0)

        ledger = pipeline.ledger()
        assert summary["events"] >= seeded and summary["processed"] > 0
        assert not ledger.pending_batches()
        assert {p.channel for p in ledger.replay_positions()} == set(
            pipeline.settings().cdc_channels
        )
        facts = ledger.lead_facts_frame()
        assert facts["Routing_Rule__c"].notna().sum() > 0
        assert summary["drained"] > 0  # routing fields went back to the org
        now = datetime.now(UTC)  # released at the end of the generation
        assert all(lease.expires_at <= now for lease in ledger.channel_leases())

        # The next generation resumes after the durable replay ids: a new lead is routed, and
        # nothing seen before is staged again.
        before = _staged(pipeline)
        lead = _add_queue_lead(pipeline)
        _run_stream(pipeline, instance, 4.0)
        assert _staged(pipeline) > before
        assert lead in set(ledger.lead_facts_frame().dropna(subset=["Routing_Rule__c"])["Id"])


def test_two_stream_workers_never_consume_one_channel_at_once(small_sandbox) -> None:
    pipeline = small_sandbox
    settings = pipeline.settings()
    wiring.org_connection(settings)
    first = wiring.stream_worker(
        settings.model_copy(update={"cdc_stream_generation_seconds": 6}), holder="run-a"
    )
    second = wiring.stream_worker(
        settings.model_copy(update={"cdc_stream_generation_seconds": 3}), holder="run-b"
    )
    stop_a, stop_b = threading.Event(), threading.Event()
    runner = threading.Thread(target=first.run, args=(stop_a,))
    runner.start()
    deadline = time.monotonic() + 30
    while not pipeline.ledger().channel_leases() and time.monotonic() < deadline:
        time.sleep(0.1)
    now = datetime.now(UTC)
    live = {lease.holder for lease in pipeline.ledger().channel_leases() if lease.expires_at > now}
    assert live == {"run-a"}

    progress = second.run(stop_b)  # its whole lifetime passes waiting for the leases

    runner.join(30)
    assert progress.batches == 0 and progress.processed == 0
    assert first.progress.batches > 0


def test_a_killed_holders_channels_are_taken_over_once_its_lease_expires(small_sandbox) -> None:
    pipeline = small_sandbox
    settings = pipeline.settings()
    wiring.org_connection(settings)
    ledger = pipeline.ledger()
    # A zombie: a run that took the leases and died without releasing them (kill -9).
    assert ledger.acquire_leases("zombie", settings.cdc_channels, ttl=timedelta(seconds=3))
    worker = wiring.stream_worker(
        settings.model_copy(update={"cdc_stream_generation_seconds": 10}), holder="run-b"
    )

    progress = worker.run(threading.Event())

    assert 0 < progress.waited_for_lease_s < 10
    assert progress.processed > 0


def _tick(instance, pipeline, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"pipeline": pipeline}
    )
    return cdc_sensor(context)


def test_the_sensor_keeps_one_stream_run_alive_and_mirrors_its_replay_ids(
    small_sandbox, monkeypatch
) -> None:
    pipeline = small_sandbox
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    with dg.instance_for_test() as instance:
        first = _tick(instance, pipeline, None)
        (request,) = first.run_requests
        assert (request.job_name, request.run_key) == ("cdc_stream", "cdc_stream:1")
        assert request.tags["dagster/max_retries"] == "0"  # the sensor starts the next one
        # While a stream run is in progress no second one is requested.
        live = instance.add_run(
            dg.DagsterRun(
                job_name="cdc_stream",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags=request.tags,
            )
        )
        busy = _tick(instance, pipeline, first.cursor)
        assert not busy.run_requests and "is consuming" in busy.skip_reason.skip_message
        instance.report_run_failed(instance.get_run_by_id(live.run_id))
        again = _tick(instance, pipeline, busy.cursor)
        assert [r.run_key for r in again.run_requests] == ["cdc_stream:2"]

        _run_stream(pipeline, instance, 5.0)
        mirrored = _tick(instance, pipeline, again.cursor)
        positions = {p.channel: p for p in pipeline.ledger().replay_positions()}
        observed = {e.metadata["channel"].value: e.metadata for e in mirrored.asset_events}
        assert set(observed) == set(positions)
        cursor = SensorCursor.from_json(mirrored.cursor)
        assert {c: v.replay_id for c, v in cursor.channels.items()} == {
            c: p.replay_id for c, p in positions.items()
        }


def test_switching_stream_sensor_stream_loses_and_doubles_nothing(
    small_sandbox, monkeypatch
) -> None:
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        monkeypatch.setenv("KPI_CDC_MODE", "stream")
        _run_stream(pipeline, instance, 5.0)
        _add_queue_lead(pipeline)

        monkeypatch.setenv("KPI_CDC_MODE", "sensor")
        cursor = _tick(instance, pipeline, None).cursor  # fresh sensor state: from the store
        for _ in range(3):
            result = _tick(instance, pipeline, cursor)
            cursor = result.cursor
            for request in result.run_requests:
                assert run_processing(pipeline, instance, request.run_config).success
        _add_queue_lead(pipeline)

        monkeypatch.setenv("KPI_CDC_MODE", "stream")
        _run_stream(pipeline, instance, 5.0)
        _run_stream(pipeline, instance, 2.0)  # stages the echoes of the last write-back

        assert _staged(pipeline) == _org_changes(pipeline)  # every change, once
        assert not pipeline.ledger().pending_batches()
        routes = pipeline.ledger().decisions_between(workload="lead_route")
        assert len([d for d in routes if d.rule_id != "superseded"]) == len(
            set(pipeline.ledger().lead_facts_frame().dropna(subset=["Routing_Rule__c"])["Id"])
        )


@pytest.mark.parametrize("mode", ["sensor", "stream"])
def test_every_run_request_resolves_as_the_daemon_resolves_it(
    small_sandbox, monkeypatch, mode
) -> None:
    """The sensor targets two jobs, so each request must name its job: evaluate_tick
    resolves them the way the daemon does (calling the sensor directly does not)."""
    monkeypatch.setenv("KPI_CDC_MODE", mode)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"pipeline": small_sandbox})
        data = cdc_sensor.evaluate_tick(context)
        assert data.run_requests
        expected = "cdc_stream" if mode == "stream" else "process_cdc_batch"
        assert {r.job_name for r in data.run_requests} == {expected}


LEAD_CHANNEL = "/data/LeadChangeEvent"


def _stream_then_lead_replay_id(pipeline: PipelineResource, instance) -> tuple[Ledger, bytes]:
    """Run a stream generation of 4 s: the ledger, and the Lead channel's replay id after it."""
    _run_stream(pipeline, instance, 4.0)
    ledger = pipeline.ledger()
    return ledger, ledger.replay_id(LEAD_CHANNEL)


def test_a_poison_event_in_the_stream_is_dead_lettered_and_the_stream_goes_on(
    small_sandbox,
) -> None:
    from kpi_pipeline.core.raw import RawEvent, StreamBatch

    pipeline = small_sandbox
    settings = pipeline.settings()
    with dg.instance_for_test() as instance:
        ledger, stored = _stream_then_lead_replay_id(pipeline, instance)
        channel = LEAD_CHANNEL
        with ledger.read() as conn:
            schema_id = (
                conn.execute(
                    sa.select(t.cdc_inbox.c.schema_id).where(t.cdc_inbox.c.channel == channel)
                )
                .scalars()
                .first()
            )
        poison = RawEvent(channel, b"\xff" * 8, schema_id, b"\x02\x03not avro", "poison")
        # Handed to the stream's handler exactly as a FetchResponse carrying it would be.
        worker = wiring.stream_worker(settings, holder="run-poison")
        worker.handle(StreamBatch(channel, (poison,), b"\xff" * 8, stored, "rpc-poison"))

        (letter,) = ledger.dead_letters(channel=channel)
        assert letter.replay_id == b"\xff" * 8 and letter.stage == "decode" and letter.reason
        assert not ledger.pending_batches()  # its batch is done: the stream is not stuck on it
        assert ledger.replay_id(channel) == b"\xff" * 8

        ledger.set_replay_id(channel, stored)  # the sandbox never issued that id
        lead = _add_queue_lead(pipeline)
        _run_stream(pipeline, instance, 4.0)
        routed = ledger.lead_facts_frame().dropna(subset=["Routing_Rule__c"])["Id"]
        assert lead in set(routed)


def test_responses_staged_in_a_row_are_processed_together_and_each_marked_done(
    small_sandbox,
) -> None:
    """Under a burst the server sends one-event responses; each is staged with its replay id
    at once, and what is staged is processed in one pass when nothing more is queued."""
    from kpi_pipeline.core.raw import RawEvent, StreamBatch

    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        ledger, stored = _stream_then_lead_replay_id(pipeline, instance)
    channel = LEAD_CHANNEL
    with ledger.read() as conn:
        rows = conn.execute(
            sa.select(t.cdc_inbox.c.schema_id, t.cdc_inbox.c.payload)
            .where(t.cdc_inbox.c.channel == channel)
            .limit(3)
        ).all()
    worker = wiring.stream_worker(pipeline.settings(), holder="run-burst")
    previous = stored
    for n, row in enumerate(rows, start=1):  # the same changes again, under new replay ids
        replay_id = b"\xfe" * 7 + bytes([n])
        raw = RawEvent(channel, replay_id, row.schema_id, bytes(row.payload), f"burst-{n}")
        worker.stage(StreamBatch(channel, (raw,), replay_id, previous, f"rpc-{n}"))
        previous = replay_id
    assert len(ledger.pending_batches()) == len(rows) == 3  # durable, not processed yet
    assert ledger.replay_id(channel) == previous
    assert worker.decoder.kept == 3  # decoded once to stage them

    worker.flush()

    assert not ledger.pending_batches()
    assert worker.decoder.kept == 0  # processing took them instead of decoding again
    with ledger.read() as conn:
        summaries = (
            conn.execute(
                sa.select(t.cdc_batches.c.summary).where(t.cdc_batches.c.run_id == "run-burst")
            )
            .scalars()
            .all()
        )
    assert [s["batches"] for s in summaries] == [3, 3, 3]  # one processing pass for all three
