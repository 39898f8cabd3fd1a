"""The Dagster shell end to end in one process: cdc_sensor (sensor mode) against the sandbox
org (real gRPC and REST on loopback), its one process_cdc_batch run over every pending batch,
write-back, and the next tick's echoes.

Instances: Dagster's SQLite storage and PostgreSQL storage (dagster-postgres, real server).
"""

from __future__ import annotations

import contextlib

import dagster as dg
import pytest
import sqlalchemy as sa

from kpi_pipeline.core.cursor import SensorCursor
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
from kpi_pipeline.sandbox.store import SandboxStore
from kpi_pipeline_tests.support.sandbox_pipeline import run_processing

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)


@contextlib.contextmanager
def _instance(kind: str, make_postgres_db):
    if kind == "postgres":
        url = make_postgres_db().replace("postgresql+psycopg2://", "postgresql://")
        with dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": url}}}
        ) as instance:
            yield instance
    else:
        with dg.instance_for_test() as instance:
            yield instance


def _tick(instance, pipeline, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"pipeline": pipeline}
    )
    return cdc_sensor(context)


def _batch_ids(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["load_batch"]["config"]["batch_ids"]


def _run_all(result, instance, pipeline):
    job = defs().resolve_job_def("process_cdc_batch")
    outputs = []
    for request in result.run_requests:
        run = job.execute_in_process(
            run_config=request.run_config,
            instance=instance,
            resources={"pipeline": pipeline},
            tags=request.tags,
        )
        assert run.success
        outputs.append(run.output_for_node("complete_batch"))
    return outputs


@pytest.mark.parametrize("instance_kind", ["sqlite", "postgres"])
def test_sensor_stages_batches_and_job_processes_them(
    small_sandbox, instance_kind, make_postgres_db
):
    pipeline = small_sandbox
    with _instance(instance_kind, make_postgres_db) as instance:
        first = _tick(instance, pipeline, None)
        # One run for every batch the tick staged, in replay order (staging order).
        (request,) = first.run_requests
        assert request.run_key.startswith("cdc:/data/") and request.run_key.endswith("#attempt1")
        assert set(request.run_config["ops"]) == {"load_batch"}  # batch ids, never payloads
        assert _batch_ids(request) == [b.batch_id for b in pipeline.ledger().pending_batches()]
        assert len(_batch_ids(request)) == 3  # a batch per channel
        assert request.tags["kpi/channels"].count("/data/") == 3
        observed = {e.metadata["channel"].value: e.metadata for e in first.asset_events}
        assert set(observed) == {
            "/data/LeadChangeEvent",
            "/data/TaskChangeEvent",
            "/data/EmailMessageChangeEvent",
        }
        assert all(m["replay_id"].value for m in observed.values())
        assert all("lag_seconds" in m for m in observed.values())

        summaries = _run_all(first, instance, pipeline)
        ledger = pipeline.ledger()
        assert not ledger.pending_batches()
        facts = ledger.lead_facts_frame()
        assert facts["Routing_Rule__c"].notna().sum() > 0
        assert facts["First_Response_At__c"].notna().sum() > 0
        assert sum(s["write_back"]["sent"] for s in summaries) > 0

        # Write-back reached the sandbox org over REST: its Lead records carry the routing fields.
        store = SandboxStore(pipeline.settings().sandbox_store_path)
        routed = facts.dropna(subset=["Routing_Rule__c"]).iloc[0]
        record = store.get_record("Lead", routed["Id"])
        assert record["Routing_Policy_Version__c"] == routed["Routing_Policy_Version__c"]
        store.close()

        # The next tick resumes after the cursor: it sees only the echoes of our own writes,
        # which update record state but trigger no workload.
        second = _tick(instance, pipeline, first.cursor)
        before = SensorCursor.from_json(first.cursor)
        after = SensorCursor.from_json(second.cursor)
        lead = "/data/LeadChangeEvent"
        assert after.for_channel(lead).replay_id > before.for_channel(lead).replay_id
        routing_before = facts.set_index("Id")["OwnerId"].to_dict()
        for summary in _run_all(second, instance, pipeline):
            assert summary["routing"].get("routed", 0) == 0
        assert (
            pipeline.ledger().lead_facts_frame().set_index("Id")["OwnerId"].to_dict()
            == routing_before
        )


def test_interrupted_tick_re_emits_the_same_batch_without_restaging(small_sandbox):
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        first = _tick(instance, pipeline, None)
        # The cursor of that tick is never committed (the daemon died): evaluate again from the old cursor.
        again = _tick(instance, pipeline, None)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
        assert len(first.run_requests) == 1

        def positions(c):
            return {
                ch: (v.replay_id, v.batch_id)
                for ch, v in SensorCursor.from_json(c).channels.items()
            }

        assert positions(again.cursor) == positions(first.cursor)
        engine = pipeline.ledger().engine
        with engine.connect() as conn:
            staged = conn.execute(sa.text("select count(*) from cdc_inbox")).scalar_one()
            batches = conn.execute(sa.text("select count(*) from cdc_batches")).scalar_one()
        assert batches == len(_batch_ids(first.run_requests[0]))
        assert staged == int(first.run_requests[0].tags["kpi/events"])


def test_poison_event_is_dead_lettered_and_the_rest_of_the_batch_proceeds(small_sandbox):
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        _tick(instance, pipeline, None)
        ledger = pipeline.ledger()
        good = ledger.load_batch(ledger.pending_batches("/data/LeadChangeEvent")[0].batch_id)
        poison = RawEvent(
            "/data/LeadChangeEvent", b"\xff" * 8, good.events[0].schema_id, b"\x02\x03not avro", "x"
        )
        healthy = RawEvent(
            "/data/LeadChangeEvent",
            b"\xff" * 7 + b"\xfe",
            good.events[0].schema_id,
            good.events[0].payload,
            "y",
        )
        staged = ledger.stage_batch(
            "/data/LeadChangeEvent", [healthy, poison], {}, after_replay="poison-test"
        )
        config = {"ops": {"load_batch": {"config": {"batch_ids": [staged.batch_id]}}}}
        run = run_processing(pipeline, instance, config)
        assert run.success
        letters = ledger.dead_letters(channel="/data/LeadChangeEvent")
        assert [d.replay_id for d in letters] == [b"\xff" * 8]
        assert "decode" in letters[0].stage and letters[0].reason
        assert ledger.batch(staged.batch_id).status == "done"


def test_refused_replay_id_records_a_resync_window_and_restarts_from_earliest(small_sandbox):
    pipeline = small_sandbox
    lead = "/data/LeadChangeEvent"
    # 4 bytes is not a replay id the bus ever issued: the server refuses it with the real
    # INVALID_ARGUMENT + ...replayid.corrupted trailer.
    stale = SensorCursor().with_channel(
        lead,
        SensorCursor()
        .for_channel(lead)
        .advanced(b"\x00\x00\x00\x07", batch_id=None, commit_ms=1_700_000_000_000),
    )
    with dg.instance_for_test() as instance:
        result = _tick(instance, pipeline, stale.to_json())
        ledger = pipeline.ledger()
        windows = ledger.open_resync_windows(lead)
        assert len(windows) == 1
        assert (
            windows[0].reason == "replay_id_invalid"
            and windows[0].from_time_ms == 1_700_000_000_000
        )
        observed = {e.metadata["channel"].value: e.metadata for e in result.asset_events}
        assert observed[lead]["resync_window_id"].value == windows[0].id
        # The channel was not wedged: it restarted from EARLIEST and staged a batch.
        assert lead in result.run_requests[0].tags["kpi/channels"].split(",")
        assert (
            SensorCursor.from_json(result.cursor).for_channel(lead).replay_id != b"\x00\x00\x00\x07"
        )


def test_one_run_at_a_time_and_a_died_run_is_requested_again_under_a_new_attempt_key(
    small_sandbox,
):
    pipeline = small_sandbox
    job = defs().resolve_job_def("process_cdc_batch")
    with dg.instance_for_test() as instance:
        first = _tick(instance, pipeline, None)
        (request,) = first.run_requests
        run = instance.create_run_for_job(
            job_def=job, run_config=request.run_config, tags=request.tags
        )
        # While that run is queued or going, no tick asks for another, however many ticks.
        for _ in range(3):
            waiting = _tick(instance, pipeline, first.cursor)
            assert not waiting.run_requests
            assert run.run_id in waiting.skip_reason.skip_message

        instance.report_run_failed(run)  # the worker died; no batch was completed
        again = _tick(instance, pipeline, first.cursor)
        (retried,) = again.run_requests
        assert retried.run_key == request.run_key.replace("#attempt1", "#attempt2")
        assert _batch_ids(retried) == _batch_ids(request)


def test_custom_channel_carrying_all_three_objects(small_sandbox, monkeypatch):
    monkeypatch.setenv("KPI_CDC_CHANNELS", "/data/SalesKpis__chn")
    monkeypatch.setenv("KPI_CDC_MAX_EVENTS_PER_TICK", "5000")
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        result = _tick(instance, pipeline, None)
        assert [r.tags["kpi/channels"] for r in result.run_requests] == ["/data/SalesKpis__chn"]
        _run_all(result, instance, pipeline)
        facts = pipeline.ledger().lead_facts_frame()
        assert facts["Routing_Rule__c"].notna().sum() > 0
        assert set(facts["First_Response_Source__c"].dropna()) == {"EmailMessage", "Task"}


def test_a_batch_that_keeps_failing_is_left_for_an_operator_and_the_rest_go_on(
    small_sandbox, monkeypatch
):
    monkeypatch.setenv("KPI_CDC_STALLED_BATCH_MAX_ATTEMPTS", "2")
    pipeline = small_sandbox
    job = defs().resolve_job_def("process_cdc_batch")
    with dg.instance_for_test() as instance:
        first = _tick(instance, pipeline, None)
        stuck, *rest = _batch_ids(first.run_requests[0])
        cursor = first.cursor
        for _ in range(2):  # the first run and one re-request both died
            (request,) = _tick(instance, pipeline, cursor).run_requests
            assert _batch_ids(request)[0] == stuck
            run = instance.create_run_for_job(
                job_def=job, run_config=request.run_config, tags=request.tags
            )
            instance.report_run_failed(run)
        (request,) = _tick(instance, pipeline, cursor).run_requests
        assert _batch_ids(request) == rest
        assert stuck in {b.batch_id for b in pipeline.ledger().pending_batches()}
