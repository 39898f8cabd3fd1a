"""The Dagster shell of the re-sync: resync_sensor requests, cdc_resync runs (in process).

The pipeline resource talks to the sandbox REST server as it would to a real org: JWT
bearer flow against its token endpoint, then REST over HTTPS on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.defs.resync.jobs import cdc_resync, resync_sensor
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, INTEGRATION_USER_ID
from kpi_pipeline_tests.support.resync_pipeline import MINUTE, T0
from kpi_pipeline_tests.support.sandbox_org import (
    CONSUMER_KEY,
    USERNAME,
    SandboxOrg,
    key_and_certificate,
    sandbox_org,
)


@pytest.fixture
def org_and_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SandboxOrg, PipelineResource]]:
    key_file = tmp_path / "jwt_key.pem"
    key_file.write_bytes(key_and_certificate()[0])
    with sandbox_org(tmp_path / "org") as org:
        monkeypatch.setenv("KPI_SALESFORCE_LOGIN_URL", org.url)
        # Configured as for a real org over HTTPS: requests trusts the bundle it is given.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", org.ca_file)
        monkeypatch.setenv("KPI_SALESFORCE_CLIENT_ID", CONSUMER_KEY)
        monkeypatch.setenv("KPI_SALESFORCE_USERNAME", USERNAME)
        monkeypatch.setenv("KPI_SALESFORCE_PRIVATE_KEY_FILE", str(key_file))
        wiring.reset_cache()
        pipeline = PipelineResource(
            data_dir=str(tmp_path / "kpi"), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"
        )
        yield org, pipeline
        pipeline.ledger().dispose()
        wiring.reset_cache()


def _tick(instance: dg.DagsterInstance, pipeline: PipelineResource):
    return resync_sensor(
        dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline})
    )


def _run(instance: dg.DagsterInstance, pipeline: PipelineResource, request: dg.RunRequest):
    return cdc_resync.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources={"pipeline": pipeline},
        raise_on_error=False,
    )


def test_sensor_requests_a_run_per_set_of_open_windows_and_the_job_closes_them(
    org_and_pipeline: tuple[SandboxOrg, PipelineResource],
) -> None:
    org, pipeline = org_and_pipeline
    lead = org.store.create_record(
        "Lead",
        {"LastName": "Lost", "Company": "Gap Co", "OwnerId": INBOUND_QUEUE.id},
        user_id=INTEGRATION_USER_ID,
        at_ms=T0 + MINUTE,
    )
    ledger = pipeline.ledger()
    window_id = ledger.record_resync_window(
        ResyncGap(
            channel="/data/LeadChangeEvent",
            reason="replay_id_invalid",
            from_replay=replay_id_from_int(42),
            from_time_ms=T0,
            to_time_ms=None,
        )
    )
    with dg.instance_for_test() as instance:
        request = _tick(instance, pipeline)
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == f"resync:{window_id}.0"
        assert request.run_config == {
            "ops": {"resync_plan": {"config": {"window_ids": [window_id]}}}
        }
        assert _tick(instance, pipeline).run_key == request.run_key  # re-evaluation: same key

        # A failed attempt keeps the window open and backs off before the next request.
        org.server.faults.fail_next_requests(100)
        failed = _run(instance, pipeline, request)
        assert not failed.success
        [window] = ledger.open_resync_windows()
        assert "HTTP 500" in window.detail["resync_error"]
        assert isinstance(_tick(instance, pipeline), dg.SkipReason)

        org.server.faults.fail_next_requests(0)
        done = _run(instance, pipeline, request)
        assert done.success
        output = done.output_for_node("resync_windows")
        [report] = output["windows"]
        assert (report["status"], report["records_read"]) == ("closed", 1)
        assert output["write_back"]["sent"] >= 1  # the routing fields went to the org
        [output_event] = [
            e for e in done.events_for_node("resync_windows") if e.event_type_value == "STEP_OUTPUT"
        ]
        metadata = output_event.event_specific_data.metadata
        assert metadata["closed"].value == 1
        assert metadata[f"window_{window_id}"].value["records_read"] == 1
        assert ledger.lead_facts_frame().set_index("Id").loc[lead].Routing_Rule__c
        assert org.store.get_record("Lead", lead)["OwnerId"] != INBOUND_QUEUE.id

        skip = _tick(instance, pipeline)
        assert isinstance(skip, dg.SkipReason) and "no open re-sync windows" in str(
            skip.skip_message
        )
