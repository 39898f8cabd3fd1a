"""Putting write-back outbox rows into a real ledger for the tests of what observes the outbox
(metrics, the outbox_backlog check, writeback_sensor), through the ledger's public methods.

Rows mark dirty fields (``mark_dirty``), drains claim them (``claim_dirty``) and give them
back (``release_claims``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from kpi_pipeline.adapters.ledger import Ledger


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
            ledger.mark_dirty(conn, "Lead", record_id, ["OwnerId"])


def claim(ledger: Ledger, limit: int) -> list[Any]:
    """Claim up to `limit` rows as a drain does (and then, in these tests, dies holding them)."""
    return ledger.claim_dirty(limit)


def fail_for_good(ledger: Ledger, claims: list[Any]) -> None:
    """What a drain does with rows Salesforce rejected permanently."""
    for token in {c.token for c in claims}:
        ids = [c.id for c in claims if c.token == token]
        ledger.release_claims(token, ids, "INVALID_FIELD", retryable=False)
