"""cdc_sensor and process_cdc_batch with lead partitions (KPI_CDC_LEAD_PARTITIONS=2), in one
process against the sandbox org: the sensor requests one run per partition over the same
batches, with the partition in config, tags and run key; a batch is done only once both
partitions completed it; a run of a partition another run holds fails clearly; a round
counts as one attempt and frees the leases of runs that died."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger import partitions as lp
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.defs.cdc.jobs import PARTITION_TAG, PARTITIONS_TAG
from kpi_pipeline.defs.cdc.sensors import FIRST_BATCH_TAG, _processing_requests, build_cdc_sensor
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.sandbox.runtime import shutdown_sandbox
from kpi_pipeline_tests.support.ledgers import NewLedger
from kpi_pipeline_tests.support.sandbox_pipeline import run_processing

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)
TTL_S = 600


@pytest.fixture
def partitioned_sandbox(tmp_path, monkeypatch) -> Iterator[PipelineResource]:
    monkeypatch.setenv("KPI_SANDBOX_LEADS_PER_DAY", "30")
    monkeypatch.setenv("KPI_SANDBOX_LIVE_LEADS_PER_HOUR", "0")
    monkeypatch.setenv("KPI_SANDBOX_SEED", "5")
    monkeypatch.setenv("KPI_CDC_MAX_EVENTS_PER_TICK", "1000")
    monkeypatch.setenv("KPI_CDC_LEAD_PARTITIONS", "2")
    wiring.reset_cache()
    data_dir = tmp_path / "kpi"
    yield PipelineResource(data_dir=str(data_dir))
    wiring.reset_cache()
    shutdown_sandbox(data_dir)


def _execute(request: dg.RunRequest, instance, pipeline, **kwargs) -> dg.ExecuteInProcessResult:
    return run_processing(pipeline, instance, request.run_config, tags=request.tags, **kwargs)


def _config(request: dg.RunRequest) -> dict:
    return request.run_config["ops"]["load_batch"]["config"]


def test_one_run_per_partition_and_a_batch_is_done_after_both(partitioned_sandbox) -> None:
    pipeline = partitioned_sandbox
    ledger = pipeline.ledger()
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline})
        first, second = cdc_sensor(context).run_requests
        pending = [b.batch_id for b in ledger.pending_batches()]
        assert len(pending) == 3
        for partition, request in enumerate((first, second)):
            assert _config(request) == {
                "batch_ids": pending,
                "partition": partition,
                "partitions": 2,
            }
            assert request.tags[PARTITION_TAG] == str(partition)
            assert request.tags[PARTITIONS_TAG] == "2"
            assert request.tags[FIRST_BATCH_TAG] == pending[0]
            assert request.run_key.endswith(f"#attempt1/p{partition}of2")

        # A run of partition 0 while another run holds it: refused, nothing processed.
        lp.acquire_partition(ledger, 0, 2, holder="another-run", ttl=_ttl())
        refused = _execute(first, instance, pipeline, raise_on_error=False)
        assert not refused.success
        assert "lead partition 0/2 is not free: run another-run holds" in _failure(refused)
        assert ledger.lead_facts_frame().empty
        lp.release_partition(ledger, 0, holder="another-run")

        assert _execute(first, instance, pipeline).success
        half = ledger.lead_facts_frame()
        assert [b.batch_id for b in ledger.pending_batches()] == pending  # not done yet
        assert all(lp.completed_partitions(ledger, b) == {2: {0}} for b in pending)

        assert _execute(second, instance, pipeline).success
        assert not ledger.pending_batches()
        done = ledger.lead_facts_frame()
        # Each partition routed its own leads: together every lead, none twice.
        assert 0 < len(half) < len(done)
        assert done["Routing_Rule__c"].notna().sum() > 0
        assert done["First_Response_At__c"].notna().sum() > 0
        assert ledger.batch(pending[0]).summary["lead_partition"] == "1/2"
        # Both runs gave their partition back.
        assert all(lease.expires_at <= _now(ledger) for lease in lp.partition_leases(ledger))


def test_a_run_whose_tags_disagree_with_its_config_fails(partitioned_sandbox) -> None:
    pipeline = partitioned_sandbox
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline})
        request = cdc_sensor(context).run_requests[1]
        untagged = request.with_replaced_attrs(tags={})
        result = _execute(untagged, instance, pipeline, raise_on_error=False)
        assert not result.success
        assert "config says lead partition 1/2 but the run's tags say (0, 1)" in _failure(result)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.event_specific_data.error)
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )


def _ttl() -> timedelta:
    return timedelta(seconds=TTL_S)


def _now(ledger: Ledger) -> datetime:
    return ledger._now()


# --- attempts and leases across rounds (no sandbox) -------------------------------------

SCHEMAS = {"schemaA": '{"type": "record", "name": "LeadChangeEvent", "fields": []}'}


def test_a_round_is_one_attempt_and_frees_the_leases_of_dead_runs(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    raw = RawEvent("/data/LeadChangeEvent", replay_id_from_int(1), "schemaA", b"x", "e1")
    head = ledger.stage_batch("/data/LeadChangeEvent", [raw], SCHEMAS).batch_id
    with dg.instance_for_test() as instance:
        for partition in range(2):  # round 1: both partition runs died
            tags = {FIRST_BATCH_TAG: head, PARTITION_TAG: str(partition), PARTITIONS_TAG: "2"}
            instance.add_run(
                dg.DagsterRun(
                    job_name="process_cdc_batch",
                    run_id=str(uuid.uuid4()),
                    status=dg.DagsterRunStatus.FAILURE,
                    tags=tags,
                )
            )
        # Partition 1's run died holding its lease (no retry left to carry it on).
        lp.acquire_partition(ledger, 1, 2, holder="dead-run", ttl=_ttl())
        requests = _processing_requests(
            instance,
            ledger,
            max_attempts=3,
            max_events=100,
            max_runtime_seconds=TTL_S,
            partitions=2,
        )
        assert [r.run_key for r in requests] == [
            f"cdc:{head}..{head}#attempt2/p0of2",
            f"cdc:{head}..{head}#attempt2/p1of2",
        ]
        assert lp.acquire_partition(ledger, 1, 2, holder="next-run", ttl=_ttl()).holder == (
            "next-run"
        )
