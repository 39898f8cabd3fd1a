"""The metric names of CONTRACTS.md §6, written once for the tests that check them: the store
exposes each of them (telemetry/test_metrics_store.py) and the Grafana dashboard has a panel
for each (repo/test_grafana_dashboard.py)."""

from __future__ import annotations

CONTRACT_METRICS = (
    "cdc_events_total",
    "cdc_lag_seconds",
    "decisions_total",
    "first_response_latency_seconds",
    "assignment_latency_seconds",
    "errors_total",
    "auth_requests_total",
    "auth_latency_seconds",
    "writeback_sends_total",
    # Read from the ledger at scrape time.
    "writeback_outbox_rows",
    "writeback_oldest_pending_age_seconds",
    "writeback_oldest_claimed_age_seconds",
    "writeback_expired_claims",
    "cdc_processing_lag_seconds",
    "writeback_lag_seconds",
    # The live path, read from the same ledger (sensor mode: no cdc_stream_alive samples).
    "cdc_pending_batches",
    "cdc_oldest_pending_batch_age_seconds",
    "cdc_stream_alive",
)
