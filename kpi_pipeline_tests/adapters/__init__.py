"""Tests of the adapters (kpi_pipeline.adapters) against real servers: the sandbox org, ledgers, wire-level stand-ins."""
