"""The Dagster shell (kpi_pipeline.defs, kpi_pipeline.definitions): jobs, sensors, checks and assets in process,
the daemon and run launcher with real processes, and the UI in a browser."""
