"""Ledgers that hold data from an older schema, for the tests of one migration: migrate an
empty ledger to an old revision, insert rows the way that revision's code wrote them, then
open it as today's code does (which upgrades it to head)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger, migrations
from kpi_pipeline.adapters.ledger.store import create_ledger_engine


def naive_times(ledger_url: str) -> bool:
    """Whether raw inserts must write naive UTC times (SQLite: UTCDateTime stores text)."""
    return sa.make_url(ledger_url).get_backend_name() == "sqlite"


@contextmanager
def upgraded_from(
    ledger_url: str,
    revision: str,
    table: str,
    columns: Sequence[sa.ColumnClause[Any]],
    rows: list[dict[str, Any]],
) -> Iterator[Ledger]:
    """The ledger at ``ledger_url`` migrated to ``revision``, given ``rows`` in ``table``
    (of ``columns`` as that revision had them), then opened at head; disposed after."""
    engine = create_ledger_engine(ledger_url)
    assert migrations.upgrade(engine, revision) == revision
    with engine.begin() as conn:
        conn.execute(sa.table(table, *columns).insert(), rows)
    engine.dispose()
    ledger = Ledger.from_url(ledger_url)  # upgrades to head
    try:
        yield ledger
    finally:
        ledger.dispose()
