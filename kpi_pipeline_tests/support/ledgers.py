"""The ledger fixtures, one set for the whole suite: a fresh ledger per test on SQLite (file,
WAL) and on the real PostgreSQL server (127.0.0.1:5432, trust auth; CI starts one).

- ``ledger_url`` / ``ledger``: parametrised, so a test using them runs on both databases
  (the PostgreSQL case carries the ``postgres`` marker);
- ``new_ledger``: a factory of SQLite ledgers in the test's directory (by name, or at a given
  URL), all disposed after the test;
- ``make_postgres_db`` / ``postgres_url``: fresh, empty PostgreSQL databases, dropped after.

Registered for every test by the root conftest (``pytest_plugins``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger

PG_ADMIN_URL = os.environ.get(
    "KPI_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)

NewLedger = Callable[..., Ledger]


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


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A fresh ledger, on SQLite and on PostgreSQL (``ledger_url``)."""
    opened = Ledger.from_url(ledger_url)
    yield opened
    opened.dispose()


@pytest.fixture
def new_ledger(tmp_path: Path) -> Iterator[NewLedger]:
    """Factory: ``new_ledger(name="ledger", *, url="")`` opens the SQLite ledger
    ``tmp_path/<name>.db`` (or the ledger at ``url``); every one is disposed after the test."""
    opened: list[Ledger] = []

    def make(name: str = "ledger", *, url: str = "") -> Ledger:
        ledger = Ledger.from_url(url or f"sqlite:///{tmp_path / name}.db")
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.dispose()


def facts_by_id(ledger: Ledger) -> pd.DataFrame:
    """The ledger's lead facts, indexed and sorted by lead Id (for comparing two ledgers)."""
    return ledger.lead_facts_frame().set_index("Id").sort_index()
