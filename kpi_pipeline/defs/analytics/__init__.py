"""What analysts read: the lead ledger, the daily KPI rollups and flywheel logs, their checks,
schedules and scheduled backfills."""

import dagster as dg

from kpi_pipeline.config import Settings
from kpi_pipeline.defs.analytics.assets import build_daily_assets, daily_partitions, lead_ledger
from kpi_pipeline.defs.analytics.backfill import build_kpi_backfill
from kpi_pipeline.defs.analytics.checks import (
    FRESHNESS_CHECKS,
    LEDGER_CHECKS,
    freshness_checks_sensor,
)
from kpi_pipeline.defs.analytics.schedules import (
    daily_kpi_schedule,
    daily_kpis_job,
    ledger_snapshot_job,
    ledger_snapshot_schedule,
    weekly_kpi_backfill_schedule,
)
from kpi_pipeline.defs.executors import fanout_executor, step_tags


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[lead_ledger, *build_daily_assets(daily_partitions(settings.timezone))],
        asset_checks=[*LEDGER_CHECKS, *FRESHNESS_CHECKS],
        jobs=[
            daily_kpis_job,
            ledger_snapshot_job,
            build_kpi_backfill(fanout_executor(settings), step_tags(settings, "kpi")),
        ],
        schedules=[daily_kpi_schedule, weekly_kpi_backfill_schedule, ledger_snapshot_schedule],
        sensors=[freshness_checks_sensor],
    )
