"""A fresh ledger per test, on SQLite (file, WAL) and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kpi_pipeline.ledger import Ledger


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    make_postgres_db: Callable[[], str] = request.getfixturevalue("make_postgres_db")
    return make_postgres_db()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger.from_url(ledger_url)
    yield opened
    opened.dispose()
