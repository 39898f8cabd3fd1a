"""writeback_drain against the sandbox org (real REST on loopback): a batch run that could not
write back leaves its rows in the outbox, and the idle drain sends them."""

from __future__ import annotations

import dagster as dg

from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
from kpi_pipeline.defs.cdc.writeback import writeback_drain
from kpi_pipeline.sandbox.store import SandboxStore

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)


def test_the_idle_drain_sends_what_batch_runs_left_in_the_outbox(small_sandbox, monkeypatch):
    pipeline = small_sandbox
    # Batch runs process but do not drain: their rows stay in the outbox, as after a run
    # worker died before its drain.
    monkeypatch.setenv("KPI_WRITEBACK_ENABLED", "false")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline})
        tick = cdc_sensor(context)
        assert tick.run_requests, tick.skip_reason
        job = defs().resolve_job_def("process_cdc_batch")
        for request in tick.run_requests:
            run = job.execute_in_process(
                run_config=request.run_config, instance=instance, resources={"pipeline": pipeline}
            )
            assert run.success
        ledger = pipeline.ledger()
        waiting = ledger.outbox_health().backlog
        assert waiting > 0

        monkeypatch.setenv("KPI_WRITEBACK_ENABLED", "true")
        result = writeback_drain.execute_in_process(
            instance=instance, resources={"pipeline": pipeline}
        )
        assert result.success
        summary = result.output_for_node("drain_outbox")
        assert summary["sent"] > 0 and summary["failed"] == 0 and summary["error"] is None
        (output,) = [e for e in result.events_for_node("drain_outbox") if e.is_successful_output]
        assert output.step_output_data.metadata["write_back"].value == summary
        assert ledger.outbox_health().backlog == 0

    # The org now carries the routing fields the ledger holds.
    facts = ledger.lead_facts_frame()
    routed = facts.dropna(subset=["Routing_Rule__c"]).iloc[0]
    store = SandboxStore(pipeline.settings().sandbox_store_path)
    try:
        record = store.get_record("Lead", routed["Id"])
    finally:
        store.close()
    assert record["Routing_Policy_Version__c"] == routed["Routing_Policy_Version__c"]
