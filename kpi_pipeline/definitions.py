"""The one Definitions object of the kpi_pipeline code location (workspace.yaml points here)."""

from __future__ import annotations

import dagster as dg

from kpi_pipeline.defs.assets import cdc_events
from kpi_pipeline.defs.jobs import process_cdc_batch
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.defs.sensors import cdc_sensor

defs = dg.Definitions(
    assets=[cdc_events],
    jobs=[process_cdc_batch],
    sensors=[cdc_sensor],
    resources={"pipeline": PipelineResource()},
)
