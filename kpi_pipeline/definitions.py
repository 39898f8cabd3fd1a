"""The kpi_pipeline code location (workspace.yaml points here): each domain's definitions,
merged. Loaded lazily (``@dg.definitions``): settings are read when Dagster loads the location,
never when this module is imported."""

import dagster as dg

from kpi_pipeline.config import get_settings
from kpi_pipeline.defs import analytics, cdc, resync
from kpi_pipeline.defs.resources import PipelineResource


@dg.definitions
def defs() -> dg.Definitions:
    settings = get_settings()
    return dg.Definitions.merge(
        cdc.build_defs(settings),
        resync.build_defs(settings),
        analytics.build_defs(settings),
        dg.Definitions(resources={"pipeline": PipelineResource()}),
    )
