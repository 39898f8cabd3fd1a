"""Pub/Sub clients this project did not write (npm, PyPI) against `kpi-pipeline sandbox serve --tls`."""
