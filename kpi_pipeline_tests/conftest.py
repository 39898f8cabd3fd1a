"""Process-wide test setup (signals, environment), and the fixtures every folder shares.

PostgreSQL is a real server (127.0.0.1:5432, trust auth); CI starts one."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

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
# Under pytest-xdist each worker gets its own: tests compare totals before and after a step.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["KPI_METRICS_DIR"] = tempfile.mkdtemp(
        prefix=f"kpi-test-metrics-{os.environ['PYTEST_XDIST_WORKER']}-"
    )
else:
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


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup
# --no-loadscope-reorder`: the groups in collection order). The tests
# marked slow start real deployments (daemons, code servers, run workers, sandbox orgs) and
# spend most of their time waiting on them: they form one group, collected first so one
# worker starts on it at once while the other works through every other file. Files stay
# whole (a group each), as their fixtures and servers assume. Measured in README, "Tests".
SLOW_GROUP = "slow-deployments"


def pytest_itemcollected(item: pytest.Item) -> None:
    """The xdist group of each test, given as it is collected: before any
    ``pytest_collection_modifyitems``, xdist's own (which reads the groups into the test ids)
    included."""
    group = SLOW_GROUP if item.get_closest_marker("slow") else item.nodeid.split("::")[0]
    item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first


def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker, fail loudly if the groups did not reach the test ids. With pytest
    9.2, xdist 3.8's loadgroup silently stops grouping (pytest-xdist issue 1386): the slow
    deployments would then run beside each other and the UI test's servers twice at once."""
    grouping = getattr(session.config.option, "loadgroup", False)
    if grouping and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError(
            "pytest-xdist's --dist loadgroup did not group the tests (pytest-xdist issue "
            "1386, pytest 9.2): install the pytest version pyproject.toml pins"
        )
