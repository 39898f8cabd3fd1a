"""Putting write-back outbox rows into a real ledger for the tests of what observes the outbox
(metrics, the outbox_backlog check, writeback_sensor), through the ledger's public methods.

The outbox is moving from value snapshots (``enqueue_update``/``claim_pending``/
``mark_failed``) to dirty fields (``mark_dirty``/``claim_dirty``/``release_claims``); these
helpers use whichever the ledger has, so the observers' tests do not depend on that change.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from kpi_pipeline.ledger import Ledger


class MovableClock:
    """A ledger clock tests move forward, so rows age without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def queue(ledger: Ledger, record_ids: Iterable[str]) -> None:
    """Queue an owner write-back for each Lead."""
    with ledger.write() as conn:
        for record_id in record_ids:
            if hasattr(ledger, "mark_dirty"):
                ledger.mark_dirty(conn, "Lead", record_id, ["OwnerId"])
            else:
                ledger.enqueue_update(conn, "Lead", record_id, {"OwnerId": "005000000000001AAA"})


def claim(ledger: Ledger, limit: int) -> list[Any]:
    """Claim up to `limit` rows as a drain does (and then, in these tests, dies holding them)."""
    if hasattr(ledger, "claim_dirty"):
        return ledger.claim_dirty(limit)
    return ledger.claim_pending(limit)


def fail_for_good(ledger: Ledger, claims: list[Any]) -> None:
    """What a drain does with rows Salesforce rejected permanently."""
    if hasattr(ledger, "release_claims"):
        for token in {c.token for c in claims}:
            ids = [c.id for c in claims if c.token == token]
            ledger.release_claims(token, ids, "INVALID_FIELD", retryable=False)
        return
    for item in claims:
        ledger.mark_failed(item.id, "INVALID_FIELD", retryable=False)
