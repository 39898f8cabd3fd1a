"""Software-defined assets. ``cdc_events`` is external: observed by cdc_sensor, never materialized."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from kpi_pipeline.defs.asset_keys import CDC_EVENTS_KEY

cdc_events = dg.AssetSpec(
    key=CDC_EVENTS_KEY,
    description=(
        "The Salesforce Change Data Capture stream (Pub/Sub API), per channel. Observed by "
        "cdc_sensor on every tick: replay id reached, lag behind the newest commit, event counts "
        "by change type."
    ),
    group_name="ingestion",
    kinds={"salesforce"},
    metadata={"source": "Salesforce Pub/Sub API (gRPC + Avro)"},
    # Observed every sensor tick (≥ 5 s); no observation for 15 minutes means ingestion stopped.
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=5)
    ),
)
