"""The code location loads, and its asset graph is the lineage analysts rely on."""

import dagster as dg

from kpi_pipeline.core.kpis.rollups import ROLLUP_NAMES
from kpi_pipeline.definitions import defs
from kpi_pipeline_tests.support.asset_names import KPI_ASSETS

KPI_KEYS = {dg.AssetKey(f"kpi_{name}") for name in ROLLUP_NAMES}


def test_definitions_load_and_every_job_schedule_and_sensor_resolves():
    dg.Definitions.validate_loadable(defs())
    for job in ("process_cdc_batch", "daily_kpis", "ledger_snapshot", "cdc_resync"):
        assert defs().resolve_job_def(job).name == job
    for schedule in (
        "daily_kpi_schedule",
        "weekly_kpi_backfill_schedule",
        "ledger_snapshot_schedule",
    ):
        assert defs().resolve_schedule_def(schedule).name == schedule
    for sensor in ("cdc_sensor", "resync_sensor", "freshness_checks_sensor"):
        assert defs().resolve_sensor_def(sensor).name == sensor
    assert defs().resolve_sensor_def("cdc_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_lineage_from_the_change_stream_to_kpis_and_flywheel():
    graph = defs().resolve_asset_graph()
    parents = {key: set(graph.get(key).parent_keys) for key in graph.get_all_asset_keys()}
    assert parents[dg.AssetKey("lead_ledger")] == {dg.AssetKey("cdc_events")}
    assert {key.to_user_string() for key in KPI_KEYS} == KPI_ASSETS
    for key in KPI_KEYS:
        assert parents[key] == {dg.AssetKey("lead_ledger")}
        assert graph.get(key).partitions_def is not None  # daily, like the other KPI assets
    assert parents[dg.AssetKey("flywheel_logs")] == {dg.AssetKey("lead_ledger")}
    assert parents[dg.AssetKey("flywheel_index")] == {dg.AssetKey("flywheel_logs")}


def test_every_asset_has_a_description_a_group_and_a_freshness_policy():
    for spec in defs().resolve_all_asset_specs():
        assert spec.description, spec.key
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.freshness_policy is not None, spec.key


def test_invariant_checks_block_downstream_assets():
    graph = defs().resolve_asset_graph()
    specs = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys}
    for name in (
        "ttfr_non_negative",
        "first_response_complete",
        "decisions_carry_policy_version",
        "records_validate",
    ):
        assert specs[name].blocking, name
    assert not specs[
        "reconciles_with_ledger"
    ].blocking  # a warning for analysts; nothing downstream


def test_process_cdc_batch_runs_the_workload_steps_in_the_declared_order():
    """The job's graph is the order ``BatchProcessor.process`` (and so ``replay``) runs."""
    from kpi_pipeline.app.processing.steps import STEPS

    job = defs().resolve_job_def("process_cdc_batch")
    deps = job.graph.dependency_structure
    upstream = {
        node.name: {output.node_name for output in deps.all_upstream_outputs_from_node(node.name)}
        for node in job.graph.nodes
    }
    assert upstream["load_batch"] == set()
    for step in STEPS:
        assert upstream[step.name] == {"load_batch", *step.after}
    assert upstream["complete_batch"] == {"load_batch", *(step.name for step in STEPS)}
    assert [s.name for s in STEPS] == ["route_leads", "detect_first_touch", "recommend_templates"]
