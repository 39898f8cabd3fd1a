"""Software-defined assets. ``cdc_events`` is external: observed by cdc_sensor, never materialized."""

from __future__ import annotations

import dagster as dg

CDC_EVENTS_KEY = dg.AssetKey("cdc_events")

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
)
