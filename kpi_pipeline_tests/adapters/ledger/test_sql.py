"""The ledger's shared SQL helpers, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from kpi_pipeline.adapters.ledger import Ledger, LedgerError
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.bulk import CHUNK
from kpi_pipeline.adapters.ledger.sql import pairs_where_in, required_row


def test_pairs_where_in_reads_every_chunk_of_ids(ledger: Ledger) -> None:
    links = {f"02s{n:05d}": f"00T{n % (CHUNK + 7):05d}" for n in range(2 * CHUNK + 3)}
    with ledger.write() as conn:
        conn.execute(
            t.email_activity_links.insert(),
            [{"email_id": email, "activity_id": task} for email, task in links.items()],
        )
    c = t.email_activity_links.c
    wanted = [*sorted(set(links.values())), "00T_unknown"]  # more than CHUNK ids
    with ledger.read() as conn:
        found = pairs_where_in(conn, (c.email_id, c.activity_id), c.activity_id, wanted)
        assert found == links
        assert pairs_where_in(conn, (c.email_id, c.activity_id), c.activity_id, []) == {}


def test_required_row_names_what_is_missing(ledger: Ledger) -> None:
    with ledger.read() as conn, pytest.raises(LedgerError, match=r"^no batch 'b1' here$"):
        required_row(conn, t.cdc_batches.c.batch_id, "b1", "no batch {!r} here")
