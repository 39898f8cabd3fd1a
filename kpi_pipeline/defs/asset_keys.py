"""The asset keys every domain refers to: lineage crosses domains (cdc_events → lead_ledger →
kpi_* and flywheel_*), so the keys live apart from the assets that define them."""

import dagster as dg

from kpi_pipeline.core.kpis import rollups

CDC_EVENTS_KEY = dg.AssetKey("cdc_events")
LEDGER_KEY = dg.AssetKey("lead_ledger")
KPI_KEYS = {name: dg.AssetKey(f"kpi_{name}") for name in rollups.ROLLUP_NAMES}
FLYWHEEL_LOGS_KEY = dg.AssetKey("flywheel_logs")
FLYWHEEL_INDEX_KEY = dg.AssetKey("flywheel_index")
