"""The operator web server (kpi_pipeline.web) over real HTTP, scraped by a real Prometheus."""
