"""Jobs and schedules over the analytics assets: the daily rollup and the scheduled backfill."""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from kpi_pipeline.defs.asset_keys import KPI_KEYS, LEDGER_KEY

DAILY_ASSETS = dg.AssetSelection.assets(*KPI_KEYS.values(), "flywheel_logs", "flywheel_index")

daily_kpis_job = dg.define_asset_job(
    "daily_kpis",
    selection=DAILY_ASSETS,
    description="KPI rollups and flywheel logs for one day (or a range, as one run: backfills).",
)
ledger_snapshot_job = dg.define_asset_job(
    "ledger_snapshot",
    selection=dg.AssetSelection.assets(LEDGER_KEY),
    description="Snapshot the lead ledger and run its blocking data checks.",
)


def _day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _running_in_utc(job: Any, cron_schedule: str, description: str):
    """A schedule of ``job`` (a ``dg.define_asset_job``) in UTC, running as soon as the code
    location loads."""
    return dg.schedule(
        job=job,
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


@_running_in_utc(
    daily_kpis_job, "15 1 * * *", "Every night: the last complete day's KPIs and flywheel logs."
)
def daily_kpi_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    day = _day(context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1))
    return dg.RunRequest(run_key=f"daily:{day}", partition_key=day)


@_running_in_utc(
    daily_kpis_job,
    "45 2 * * 0",
    "Every Sunday: re-materialize the last 7 complete days in one run (scheduled backfill), "
    "so late events, re-syncs and SLA breaches that matured are reflected.",
)
def weekly_kpi_backfill_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    end = context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)
    start = end - timedelta(days=6)
    return dg.RunRequest(
        run_key=f"backfill:{_day(start)}...{_day(end)}",
        tags={
            "dagster/asset_partition_range_start": _day(start),
            "dagster/asset_partition_range_end": _day(end),
        },
    )


@_running_in_utc(
    ledger_snapshot_job,
    "*/30 * * * *",
    "Every 30 minutes: ledger snapshot and its blocking data checks (keeps lead_ledger fresh).",
)
def ledger_snapshot_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"ledger:{context.scheduled_execution_time.isoformat()}")


__all__ = [
    "daily_kpi_schedule",
    "daily_kpis_job",
    "ledger_snapshot_job",
    "ledger_snapshot_schedule",
    "weekly_kpi_backfill_schedule",
]
