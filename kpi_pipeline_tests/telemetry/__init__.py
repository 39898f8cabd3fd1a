"""Tests of kpi_pipeline.telemetry: metrics (multiprocess store, outbox series, Pushgateway) and logs."""
