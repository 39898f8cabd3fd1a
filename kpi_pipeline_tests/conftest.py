"""Process-wide test setup (signals, environment), and the fixtures every folder shares.

PostgreSQL is a real server (127.0.0.1:5432, trust auth); CI starts one."""

from __future__ import annotations

import os
import signal
import tempfile

# A suite started from a background shell (as CI harnesses do) inherits SIGINT ignored.
# Dagster maps SIGTERM to SIGINT's disposition, so SIGTERM would be ignored too, and every
# server a test starts (inheriting it) could no longer be stopped with terminate().
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

# Most tests drive the sensor-mode path (processing runs evaluated in the test);
# stream-mode tests set KPI_CDC_MODE=stream themselves. Subprocesses inherit it.
os.environ.setdefault("KPI_CDC_MODE", "sensor")

# Metric values of test processes go to a throwaway directory, not the repository's .kpi_data
# (kpi_pipeline.telemetry.metrics reads it at the first record, whatever was imported before; one
# directory for the whole session, since a process records into one; subprocesses inherit it).
os.environ.setdefault("KPI_METRICS_DIR", tempfile.mkdtemp(prefix="kpi-test-metrics-"))

# Fixtures used across folders, registered once. Their modules live in support/ (no test
# module imports a conftest or another test module: architecture/test_test_layout.py).
pytest_plugins = [
    "kpi_pipeline_tests.support.ledgers",  # ledger_url, ledger, new_ledger, postgres_url, ...
    "kpi_pipeline_tests.support.sandbox_org",  # org
    "kpi_pipeline_tests.support.resync_pipeline",  # open_pipeline, pipeline
    "kpi_pipeline_tests.support.flywheel",  # record, es
    "kpi_pipeline_tests.support.metrics_server",  # metrics_dir, metrics_server
]
