"""Shared fixtures. PostgreSQL is a real server (127.0.0.1:5432, trust auth); CI starts one."""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

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

PG_ADMIN_URL = os.environ.get(
    "KPI_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def make_postgres_db() -> Iterator[Callable[[], str]]:
    """Factory of fresh, empty PostgreSQL databases; returns a SQLAlchemy URL. Dropped after the test."""
    created: list[str] = []
    admin = _admin_engine()

    def make() -> str:
        name = f"kpi_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(make_postgres_db: Callable[[], str]) -> str:
    """One fresh PostgreSQL database for this test."""
    return make_postgres_db()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger URL: a SQLite file, and a database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    make_postgres_db: Callable[[], str] = request.getfixturevalue("make_postgres_db")
    return make_postgres_db()
