"""Tests of the use cases (kpi_pipeline.app), over real adapters (SQLite/PostgreSQL ledgers, the sandbox org)."""
