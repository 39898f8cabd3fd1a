"""Write-back bookkeeping: how long the ledger takes to settle a drain's confirmed rows
(``Ledger.confirm_sent``), on SQLite or PostgreSQL.

``--rows`` leads are marked dirty, claimed in batches of ``--batch`` (a drain's batch size,
200 by default) and confirmed batch by batch, as ``drain_writeback`` does after Salesforce
answered; every other row is marked dirty again while claimed, so both outcomes (sent, and
pending again) are settled. Prints the seconds spent in ``confirm_sent`` only. To compare
two revisions, run it with each on PYTHONPATH, alternately (bench/RESULTS.md, Catch-up).

    PYTHONPATH=. python bench/bench_outbox_confirm.py [--rows 2000] [--batch 200]
                                                      [--ledger-url postgresql+psycopg2://...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kpi_pipeline.adapters.ledger import Ledger

FIELD = "Template_Recommended__c"


def settle(ledger: Ledger, rows: int, batch: int) -> float:
    leads = [f"00Q{n:012d}AAA" for n in range(rows)]
    with ledger.write() as conn:
        for lead in leads:
            ledger.mark_dirty(conn, "Lead", lead, [FIELD])
    spent = 0.0
    changed_again: set[str] = set()
    while claims := ledger.claim_dirty(batch):
        with ledger.write() as conn:  # half of them change again while "sending", once
            for claim in claims[::2]:
                if claim.record_id not in changed_again:
                    changed_again.add(claim.record_id)
                    ledger.mark_dirty(conn, "Lead", claim.record_id, [FIELD])
        started = time.perf_counter()
        ledger.confirm_sent(claims[0].token, [(claim, {FIELD: "t1"}) for claim in claims])
        spent += time.perf_counter() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--ledger-url", default="", help="an empty ledger (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as scratch:
        url = args.ledger_url or f"sqlite:///{Path(scratch) / 'ledger.db'}"
        ledger = Ledger.from_url(url)
        try:
            seconds = settle(ledger, args.rows, args.batch)
        finally:
            ledger.dispose()
    print(f"{args.rows} rows confirmed in batches of {args.batch}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
