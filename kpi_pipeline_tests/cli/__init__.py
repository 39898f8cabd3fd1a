"""`kpi-pipeline` commands (kpi_pipeline.cli), driven through the command line entry point."""
