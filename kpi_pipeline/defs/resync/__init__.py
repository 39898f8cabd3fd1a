"""Re-sync: ``cdc_resync`` re-reads the records of open gap windows over REST, started by
``resync_sensor`` when a window opens."""

import dagster as dg

from kpi_pipeline.defs.resync.jobs import cdc_resync, resync_sensor


def build_defs() -> dg.Definitions:
    return dg.Definitions(jobs=[cdc_resync], sensors=[resync_sensor])
