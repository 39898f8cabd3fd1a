"""Re-sync: ``cdc_resync`` re-reads the records of open gap windows over REST, started by
``resync_sensor`` when a window opens; a step per window, on the executor KPI_EXECUTOR names."""

import dagster as dg

from kpi_pipeline.config import Settings
from kpi_pipeline.defs.executors import fanout_executor, step_tags
from kpi_pipeline.defs.resync.jobs import build_cdc_resync, resync_sensor


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        jobs=[build_cdc_resync(fanout_executor(settings), step_tags(settings, "resync"))],
        sensors=[resync_sensor],
    )
