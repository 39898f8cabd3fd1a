"""process_cdc_batch's complete_batch op sends outreach emails only when KPI_SEND_EMAIL is
on (in-process Dagster run against the embedded sandbox org: real gRPC and REST)."""

from __future__ import annotations

import dagster as dg
import pytest

from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)


@pytest.fixture(autouse=True)
def _send_email_off_by_default(monkeypatch):
    monkeypatch.delenv("KPI_SEND_EMAIL", raising=False)


def _tick_and_run(instance, pipeline, cursor):
    tick = cdc_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline})
    )
    assert tick.run_requests, tick.skip_reason
    job = defs().resolve_job_def("process_cdc_batch")
    summaries = []
    for request in tick.run_requests:
        run = job.execute_in_process(
            run_config=request.run_config, instance=instance, resources={"pipeline": pipeline}
        )
        assert run.success
        summaries.append(run.output_for_node("complete_batch"))
    return tick.cursor, summaries


def test_emails_go_out_only_when_send_email_is_on(small_sandbox, monkeypatch):
    pipeline = small_sandbox
    with dg.instance_for_test() as instance:
        cursor, summaries = _tick_and_run(instance, pipeline, None)
        ledger = pipeline.ledger()
        assert sum(s["templates"]["recommended"] for s in summaries) > 0
        assert all(s["email_send"] is None for s in summaries)  # off by default
        assert ledger.outreach_sends() == []

        monkeypatch.setenv("KPI_SEND_EMAIL", "true")
        monkeypatch.setenv("KPI_EMAIL_SENDER_NAME", "Ana from Acme")
        _, summaries = _tick_and_run(instance, pipeline, cursor)  # the echoes' batches
        reports = [s["email_send"] for s in summaries]
        sent = sum(r["sent"] for r in reports)
        assert sent > 0 and all(r["unconfirmed"] == {} and r["stopped"] is None for r in reports)
        rows = ledger.outreach_sends()
        assert len(ledger.outreach_sends("sent")) == sent
        # every other recommendation was skipped for a stated reason (already answered)
        assert all(
            r.status in ("sent", "skipped") and (r.status == "sent" or r.error) for r in rows
        )
