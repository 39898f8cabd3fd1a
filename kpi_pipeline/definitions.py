"""The one Definitions object of the kpi_pipeline code location (workspace.yaml points here)."""

import dagster as dg

from kpi_pipeline.defs.analytics.assets import (
    flywheel_index,
    flywheel_logs,
    kpi_rollups,
    lead_ledger,
)
from kpi_pipeline.defs.analytics.checks import (
    FRESHNESS_CHECKS,
    LEDGER_CHECKS,
    WRITEBACK_CHECKS,
    freshness_checks_sensor,
)
from kpi_pipeline.defs.analytics.schedules import (
    daily_kpi_schedule,
    daily_kpis_job,
    ledger_snapshot_job,
    ledger_snapshot_schedule,
    weekly_kpi_backfill_schedule,
)
from kpi_pipeline.defs.cdc.assets import cdc_events
from kpi_pipeline.defs.cdc.jobs import process_cdc_batch
from kpi_pipeline.defs.cdc.sensors import cdc_sensor
from kpi_pipeline.defs.cdc.stream import cdc_stream
from kpi_pipeline.defs.cdc.writeback import writeback_drain, writeback_sensor
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.defs.resync.jobs import cdc_resync, resync_sensor

defs = dg.Definitions(
    assets=[cdc_events, lead_ledger, kpi_rollups, flywheel_logs, flywheel_index],
    asset_checks=[*LEDGER_CHECKS, *WRITEBACK_CHECKS, *FRESHNESS_CHECKS],
    jobs=[
        process_cdc_batch,
        cdc_stream,
        daily_kpis_job,
        ledger_snapshot_job,
        cdc_resync,
        writeback_drain,
    ],
    schedules=[daily_kpi_schedule, weekly_kpi_backfill_schedule, ledger_snapshot_schedule],
    sensors=[cdc_sensor, freshness_checks_sensor, resync_sensor, writeback_sensor],
    resources={"pipeline": PipelineResource()},
)
