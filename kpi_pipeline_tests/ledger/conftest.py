"""A fresh ledger per test, on SQLite (file, WAL) and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kpi_pipeline.adapters.ledger import Ledger


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger.from_url(ledger_url)
    yield opened
    opened.dispose()
