"""Correct under hard kills (issue 7), with real processes.

``test_hard_kills_match_a_clean_run``: two deployments (``harness.Deployment``: a
dagster-daemon on a fresh DAGSTER_HOME, the repository's dagster.yaml, the detached sandbox
org) process the same workload: a copy of one simulated store, plus a wave of new org
activity written into both before each kill. One runs undisturbed. The other has SIGKILL
land on a run worker while it holds outbox claims, on the whole process group, and on the
daemon alone, each followed by a restart. Both run at once: the killed one spends much of its
time waiting for Dagster to notice dead runs, which leaves the two cores to the clean one.
Then the two are compared (the ``harness.check_*`` functions); every check is reported, and
the test fails listing all that did not hold.

``test_rep_reassignment_survives``: a rep moves a lead to themselves before our routing
decision reaches the org, in both orders, in one process (sensor tick and BatchProcessor
over the detached sandbox org): the rep's owner must stay.

``test_update_delay_answers_after_applying``: the sandbox fault the kills rely on.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.sandbox.runtime import shutdown_sandbox
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER_ID,
    INTEGRATION_USER_ID,
    QUEUE_IDS,
    SandboxStore,
)
from kpi_pipeline_tests.support import harness

cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The seeded history (simulated: rich activity, rep queue accepts), then a wave of new
# leads and their answers written into both orgs before each kill (harness.add_wave), so
# every kill lands on work in progress.
LEADS, DAYS, SEED = 30, 1.0, 23
WAVE_LEADS = 10
# Shared by both deployments (on top of harness.RECOVERY_ENV; the killed one's org answers
# updates slowly: harness.SLOW_UPDATES_ENV). Batches of up to 100 events and runs of up to 200
# keep several runs going one after another (each run is a process start, the bulk of the
# test's time on 2 cores), so kills land in different runs.
ENV = {"KPI_CDC_MAX_EVENTS_PER_TICK": "100", "KPI_CDC_MAX_EVENTS_PER_RUN": "200"}


@pytest.fixture
def deployments(tmp_path):
    with harness.paired_deployments(tmp_path, ENV, leads=LEADS, days=DAYS, seed=SEED) as pair:
        yield pair


@pytest.mark.timeout(540)
def test_hard_kills_match_a_clean_run(deployments):
    clean, killed = deployments
    started = time.monotonic()
    base_ms = int(time.time() * 1000) - 6 * 3600 * 1000  # the waves' leads arrive from here

    def wave(number: int):
        def add() -> None:
            harness.add_wave_to_each((clean, killed), number, leads=WAVE_LEADS, base_ms=base_ms)

        return add

    clean.start()
    killed.start()
    recoveries = [
        harness.kill_and_recover(
            killed,
            mode,
            claim_timeout=60.0,
            recover_timeout=harness.CATCH_UP_TIMEOUT,
            settle=False,
            before=wave(number),
        )
        for number, mode in enumerate(harness.KILL_MODES, start=1)
    ]
    problems: dict[str, list[str]] = {}
    for dep in (clean, killed):
        harness.finish(dep, problems)
    clean.stop()
    killed.stop()
    elapsed = time.monotonic() - started

    a, b = harness.read_outcome(clean.data_dir), harness.read_outcome(killed.data_dir)
    policy = load_policy()
    assert a.leads == b.leads == LEADS + WAVE_LEADS * len(harness.KILL_MODES)
    assert a.routed, "the clean run routed nothing: the workload does not exercise routing"
    checks = {
        **harness.clean_vs_killed_checks(a, b, policy),
        **problems,
    }
    report = harness.check_report(checks)
    timings = "; ".join(
        f"{r.mode}: killed {r.killed_pids}, claim held {r.claim_held} ({r.claimed_rows} rows), "
        f"first batch after {r.first_batch_s and round(r.first_batch_s, 1)} s {r.note}"
        for r in recoveries
    )
    print(
        f"\n{report}\nrecoveries: {timings}\nupdates per lead: clean {a.updates_per_lead:.2f}, "
        f"killed {b.updates_per_lead:.2f}; {elapsed:.0f} s"
    )
    assert recoveries[0].killed_pids and recoveries[0].claim_held, (
        f"no run worker was killed holding a claim: {timings}"
    )
    assert not any(checks.values()), report


# --- a rep's reassignment against our routing write ------------------------------------------

REP = "0055g0000000009AAA"  # Hiro Tanaka (APAC): outside the pool a US web lead routes to


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    data_dir = tmp_path / "kpi"
    data_dir.mkdir()
    monkeypatch.setenv("KPI_DATA_DIR", str(data_dir))
    monkeypatch.setenv("KPI_SANDBOX_LIVE_LEADS_PER_HOUR", "0")
    wiring.reset_cache()
    yield PipelineResource(data_dir=str(data_dir))
    wiring.reset_cache()
    shutdown_sandbox(data_dir)


def _new_lead(store: SandboxStore) -> str:
    return store.create_record(
        "Lead",
        {
            "Company": "Reassigned Co",
            "Name": {"LastName": "Reassigned"},
            "Status": "Open - Not Contacted",
            "OwnerId": QUEUE_IDS[0],
            "LeadSource": "Web",
            "Address": {"CountryCode": "US"},
        },
        user_id=AUTOMATION_USER_ID,  # a web form, as marketing automation creates them
    )


def _stage(instance, pipeline, cursor):
    result = cdc_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline})
    )
    batch_ids = [
        batch_id
        for request in result.run_requests
        for batch_id in request.run_config["ops"]["load_batch"]["config"]["batch_ids"]
    ]
    return batch_ids, result.cursor


def _decide(pipeline, batch_id: str) -> dict:
    """The decision half of process_cdc_batch (load_batch .. recommend_templates)."""
    processor = pipeline.processor()
    batch = pipeline.ledger().load_batch(batch_id)
    events = processor.decode(batch, pipeline.decoder()).events
    processor.apply_records(events)
    routing = processor.route_leads(processor.select_routing(events))
    processor.detect_first_touch(**processor.select_first_touch(events))
    processor.recommend_templates(routing_summary=routing, **processor.select_templates(events))
    return routing


def _drain_and_complete(pipeline, batch_id: str) -> None:
    """The write-back half (complete_batch): drain the outbox, mark the batch done."""
    if hasattr(pipeline, "drain_writeback"):  # the resource's entry point, once it has one
        pipeline.drain_writeback()
    else:
        from kpi_pipeline.app.writeback import drain_writeback

        drain_writeback(pipeline.ledger(), pipeline.salesforce_rest())
    pipeline.ledger().mark_batch_done(batch_id, run_id="test", summary={})


def _process_all(instance, pipeline, cursor, rounds: int = 4):
    """Later ticks: the rep's change and our echoes reach the ledger; drain after each."""
    for _ in range(rounds):
        batch_ids, cursor = _stage(instance, pipeline, cursor)
        for batch_id in batch_ids:
            _decide(pipeline, batch_id)
            _drain_and_complete(pipeline, batch_id)
    return cursor


@pytest.mark.parametrize("order", ["rep before our write is sent", "rep after our decision"])
def test_rep_reassignment_survives(pipeline, order):
    store = SandboxStore(pipeline.settings().sandbox_store_path)
    try:
        # Before anything starts the sandbox: a store with changes is served as it is
        # (an empty one would be seeded with simulated history).
        lead = _new_lead(store)
        with dg.instance_for_test() as instance:
            batch_ids, cursor = _stage(instance, pipeline, None)
            assert batch_ids
            if order == "rep before our write is sent":
                # Committed in the org after the lead's batch was staged: the ledger cannot
                # know it when routing; the write-back must not overwrite it.
                store.update_record("Lead", lead, {"OwnerId": REP}, user_id=REP)
                for batch_id in batch_ids:
                    _decide(pipeline, batch_id)
                    _drain_and_complete(pipeline, batch_id)
            else:
                routed = [_decide(pipeline, batch_id) for batch_id in batch_ids]
                assert any(r.get("routed") for r in routed), routed
                store.update_record("Lead", lead, {"OwnerId": REP}, user_id=REP)
                for batch_id in batch_ids:
                    _drain_and_complete(pipeline, batch_id)
            assert store.get_record("Lead", lead)["OwnerId"] == REP, (
                "our write replaced the rep's owner"
            )
            _process_all(instance, pipeline, cursor)
        assert store.get_record("Lead", lead)["OwnerId"] == REP
        facts = pipeline.ledger().lead_facts_frame().set_index("Id")
        assert facts.loc[lead, "OwnerId"] == REP, "the ledger does not know the rep's owner"
        outcome = harness.read_outcome(Path(pipeline.settings().data_dir))
        assert harness.check_person_owner_kept(outcome, [INTEGRATION_USER_ID]) == []
        assert harness.check_outbox_empty(outcome) == []
    finally:
        store.close()


# --- the sandbox fault the kills rely on -------------------------------------------------------


def test_update_delay_answers_after_applying(tmp_path, monkeypatch):
    """The org has the values while the client still waits: the window a kill must hit."""
    import threading

    from kpi_pipeline.cli.sandbox import UPDATE_DELAY_ENV, _update_delay
    from kpi_pipeline_tests.support.sandbox_org import lead, patch_collection, sandbox_org

    with sandbox_org(tmp_path) as org:
        lead_id = _new_lead(org.store)
        org.server.faults.delay_updates(1.5)
        answers = []
        request = threading.Thread(
            target=lambda: answers.append(patch_collection(org, [lead(lead_id, Rating="Hot")]))
        )
        request.start()
        deadline = time.monotonic() + 5
        while org.store.get_record("Lead", lead_id).get("Rating") != "Hot":
            assert time.monotonic() < deadline, "the update was not applied"
            time.sleep(0.02)
        assert request.is_alive(), "answered before the delay"
        request.join(timeout=10)
        assert answers[0].status_code == 200 and answers[0].json()[0]["success"]

    # `sandbox serve` arms it from the environment the pipeline passes on.
    class Args:
        update_delay_seconds = None

    monkeypatch.setenv(UPDATE_DELAY_ENV, "2.5")
    assert _update_delay(Args()) == 2.5
    monkeypatch.setenv(UPDATE_DELAY_ENV, "-1")
    assert _update_delay(Args()) is None
