"""Analytics assets over a ledger built from a simulated week: KPI and flywheel materializations,
their checks, a 7-day backfill from the CLI, and freshness checks under a controlled clock."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.test_utils import freeze_time

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.adapters.llm.client import selector_from_settings
from kpi_pipeline.app.replay import read_events
from kpi_pipeline.core.kpis.rollups import ROLLUP_NAMES
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.defs.analytics.assets import build_daily_assets, daily_partitions, lead_ledger
from kpi_pipeline.defs.analytics.checks import (
    LEDGER_CHECKS,
    kpi_freshness_checks,
    ledger_freshness_checks,
)
from kpi_pipeline.defs.asset_keys import KPI_KEYS
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore
from kpi_pipeline_tests.support.asset_names import KPI_ASSETS
from kpi_pipeline_tests.support.paths import REPO_ROOT
from kpi_pipeline_tests.support.processors import make_processor

kpi_rollups, flywheel_logs, flywheel_index = build_daily_assets(daily_partitions("UTC"))

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = [(START + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(7)]
AS_OF = "2026-10-09T00:00:00Z"


@pytest.fixture(scope="module")
def week_of_activity(tmp_path_factory) -> Path:
    """DATA_DIR with a ledger holding a simulated week, processed by the same code as the job."""
    data_dir = tmp_path_factory.mktemp("kpi")
    start_ms = int(START.timestamp() * 1000)
    store = SandboxStore(data_dir / "sim.db", clock=lambda: start_ms + 8 * 86_400_000)
    simulate(store, leads=140, days=7, seed=21, start_ms=start_ms)
    store.export_recorded(data_dir / "events.jsonl")
    store.close()
    ledger = Ledger.from_url(f"sqlite:///{data_dir / 'ledger.db'}")
    processor = make_processor(ledger, load_policy(), selector=selector_from_settings())
    events = read_events(data_dir / "events.jsonl")
    for offset in range(0, len(events), 500):
        processor.process(events[offset : offset + 500])
    ledger.dispose()
    return data_dir


@pytest.fixture
def pipeline(week_of_activity):
    wiring.reset_cache()
    yield PipelineResource(data_dir=str(week_of_activity))
    wiring.reset_cache()


def test_ledger_snapshot_and_its_blocking_checks_pass(pipeline):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [lead_ledger, *LEDGER_CHECKS], instance=instance, resources={"pipeline": pipeline}
        )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {
        "ttfr_non_negative",
        "first_response_complete",
        "decisions_carry_policy_version",
    }
    assert all(e.passed for e in evaluations)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["leads"].value == 140
    assert metadata["routed"].value > 0
    # The live path as the check sees it: every channel, nothing pending in this ledger.
    live = metadata["live_path"].value
    assert set(live) == set(pipeline.settings().cdc_channels)
    assert all(channel["pending_batches"] == 0 for channel in live.values())
    assert metadata["live_path_problems"].value == "(none)"


def test_kpis_and_flywheel_for_one_day_with_checks(pipeline, week_of_activity):
    day = DAYS[2]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [kpi_rollups, flywheel_logs, flywheel_index],
            partition_key=day,
            instance=instance,
            resources={"pipeline": pipeline},
            run_config={"ops": {"kpi_rollups": {"config": {"as_of": AS_OF}}}},
        )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["reconciles_with_ledger"].passed
    assert evaluations["records_validate"].passed
    assert evaluations["records_validate"].metadata["records_checked"].value > 0
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {*KPI_ASSETS, "flywheel_logs"}  # index skipped: no URL
    assert {f"kpi_{n}" for n in ROLLUP_NAMES} < materialized
    _assert_sla_breakdowns(result, week_of_activity, day)
    overall = (week_of_activity / "kpis" / "ttfr_overall" / f"{day}.csv").read_text().splitlines()
    assert overall[0] == (
        "day,leads,responded,coverage,ttfr_p50,ttfr_p90,ttfr_p95,"
        "ttfr_business_p50,ttfr_business_p90,ttfr_business_p95"
    )
    assert overall[1].startswith(day)


def _assert_sla_breakdowns(result: dg.ExecuteInProcessResult, data_dir: Path, day: str) -> None:
    """The SLA breakdowns add up to the day's SLA row, and their metadata says so readably."""
    events = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    daily = pd.read_csv(data_dir / "kpis" / "sla" / f"{day}.csv")
    counts = ["met", "breached", "pending"]
    for name, header in (
        ("sla_by_owner", "day,owner_id,met,breached,pending,breach_pct"),
        ("sla_by_rule", "day,policy_version,rule,met,breached,pending,breach_pct"),
    ):
        path = data_dir / "kpis" / name / f"{day}.csv"
        assert path.read_text().splitlines()[0] == header
        table = pd.read_csv(path)
        assert table[counts].sum().tolist() == daily[counts].sum().tolist()
        metadata = events[f"kpi_{name}"].materialization.metadata
        assert [metadata[c].value for c in counts] == daily[counts].sum().tolist()
        assert metadata["groups"].value == len(table) > 0  # one day: a group per row
        assert metadata["most_breached"].value.startswith("| ")
        assert metadata["preview"].value.startswith(f"| {header.replace(',', ' | ')} |")


def test_seven_day_backfill_from_the_cli(week_of_activity, tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "KPI_DATA_DIR": str(week_of_activity),
    }
    (tmp_path / "home").mkdir()
    selection = ",".join([*(f"kpi_{n}" for n in ROLLUP_NAMES), "flywheel_logs"])
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "kpi_pipeline.definitions",
            "--select",
            selection,
            "--partition-range",
            f"{DAYS[0]}...{DAYS[-1]}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name in ROLLUP_NAMES:
        for day in DAYS:
            assert (week_of_activity / "kpis" / name / f"{day}.csv").exists(), (name, day)
    # The checks ran with the materialization, in the CLI's own instance, and passed.
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        for asset, check in [
            ("kpi_ttfr_overall", "reconciles_with_ledger"),
            ("flywheel_logs", "records_validate"),
        ]:
            key = dg.AssetCheckKey(dg.AssetKey(asset), check)
            (record,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
            assert record.status.value == "SUCCEEDED", (asset, check, record)
            assert record.event.asset_check_evaluation.passed
    logged_days = {p.stem[:10] for p in (week_of_activity / "flywheel").rglob("*.jsonl")}
    assert set(DAYS) <= logged_days  # every simulated day produced decisions


def test_freshness_check_fails_when_stale_and_passes_when_fresh(pipeline):
    checks = dg.AssetSelection.checks(*ledger_freshness_checks)
    t0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        with freeze_time(t0):
            assert dg.materialize(
                [lead_ledger], instance=instance, resources={"pipeline": pipeline}
            ).success

        def evaluate(at: datetime) -> bool:
            with freeze_time(at):
                result = dg.materialize(
                    [lead_ledger, *ledger_freshness_checks],
                    selection=checks,
                    instance=instance,
                    resources={"pipeline": pipeline},
                )
            (evaluation,) = result.get_asset_check_evaluations()
            return evaluation.passed

        assert evaluate(t0 + timedelta(minutes=30)) is True
        assert evaluate(t0 + timedelta(hours=3)) is False


def test_every_daily_asset_has_a_partition_freshness_check_that_fails_when_stale(pipeline):
    """Due by 03:00 for yesterday's partition (daily_kpis runs at 01:15). Materializations are
    reported as events: the check reads only the event log."""
    daily = [*KPI_KEYS.values(), dg.AssetKey("flywheel_logs"), dg.AssetKey("flywheel_index")]
    checked = {key for check in kpi_freshness_checks for key in check.check_keys}
    assert {key.asset_key for key in checked} == set(daily)
    at = datetime(2026, 11, 3, 4, 0, tzinfo=UTC)  # after the deadline for 2026-11-02

    def evaluate(instance: dg.DagsterInstance) -> dict[dg.AssetKey, bool]:
        with freeze_time(at):
            result = dg.materialize(
                [kpi_rollups, flywheel_logs, flywheel_index, *kpi_freshness_checks],
                selection=dg.AssetSelection.checks(*kpi_freshness_checks),
                instance=instance,
                resources={"pipeline": pipeline},
            )
        return {e.asset_key: e.passed for e in result.get_asset_check_evaluations()}

    with dg.instance_for_test() as instance:
        assert evaluate(instance) == dict.fromkeys(daily, False)  # nothing materialized: stale
        for key in daily:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=key, partition="2026-11-02")
            )
        assert evaluate(instance) == dict.fromkeys(daily, True)
