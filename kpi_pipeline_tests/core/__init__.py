"""Unit tests of kpi_pipeline.core (pure rules), one test module per core module."""
