"""The live path: CDC drained by ``cdc_sensor`` (or streamed by ``cdc_stream``), batches processed
by ``process_cdc_batch``, results written back by ``writeback_drain``, and its health checks."""

import dagster as dg

from kpi_pipeline.config import Settings
from kpi_pipeline.defs.cdc.assets import cdc_events
from kpi_pipeline.defs.cdc.checks import WRITEBACK_CHECKS
from kpi_pipeline.defs.cdc.jobs import process_cdc_batch
from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
from kpi_pipeline.defs.cdc.stream import cdc_stream
from kpi_pipeline.defs.cdc.writeback import writeback_drain, writeback_sensor


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[cdc_events],
        asset_checks=WRITEBACK_CHECKS,
        jobs=[process_cdc_batch, cdc_stream, writeback_drain],
        sensors=[build_cdc_sensor(settings.sensor_interval_seconds), writeback_sensor],
    )
