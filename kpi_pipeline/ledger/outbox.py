"""The Salesforce outbox in the ledger (mixed into ``Ledger``): implements the
``OutboxPort`` that ``kpi_pipeline.salesforce.outbox.drain_outbox`` drains.

Enqueueing is idempotent per record and field values (a hash of the canonical JSON),
so re-processing a batch does not queue the same update twice. Items are *claimed* with
a lease: a drainer that dies mid-send leaves them claimed, and they become claimable
again once the lease expires, so nothing is lost and nothing is sent twice concurrently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.ledger import schema as t
from kpi_pipeline.ledger.sql import canonical, dumps, text_insert
from kpi_pipeline.salesforce.outbox import OutboxItem  # the drain's item type (OutboxPort)

PENDING = "pending"
CLAIMED = "claimed"
SENT = "sent"
FAILED = "failed"
CLAIM_LEASE = timedelta(minutes=5)
_ENQUEUE = text_insert(
    t.sf_outbox,
    ["sobject", "record_id", "fields", "fields_hash", "status", "attempts", "created_at"],
    ["sobject", "record_id", "fields_hash"],
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row with its bookkeeping, for operators and tests."""

    id: int
    sobject: str
    record_id: str
    fields: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """How the write-back is keeping up (for metrics, the outbox_backlog check and operators).

    ``by_status`` counts rows per status (every status present, 0 when none). Ages are
    seconds: how long the oldest pending row has waited to be sent, and how long the
    oldest claimed row has been held; ``expired_claims`` are claims whose lease ran out
    (their drainer died) and that no drain has retaken yet.
    """

    by_status: dict[str, int]
    oldest_pending_age_s: float | None
    oldest_claimed_age_s: float | None
    expired_claims: int

    @property
    def backlog(self) -> int:
        """Rows still to send: pending plus claimed."""
        return self.by_status.get(PENDING, 0) + self.by_status.get(CLAIMED, 0)


def fields_hash(sobject: str, record_id: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(dumps([sobject, record_id, dict(fields)]).encode("utf-8")).hexdigest()


class OutboxMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def enqueue_update(
        self, conn: sa.Connection, sobject: str, record_id: str, fields: Mapping[str, Any]
    ) -> bool:
        """Queue a record update (in the caller's transaction); False if these exact values
        were queued for this record before."""
        if not fields:
            return False
        result = conn.execute(
            _ENQUEUE,
            {
                "sobject": sobject,
                "record_id": record_id,
                "fields": canonical(dict(fields)),
                "fields_hash": fields_hash(sobject, record_id, fields),
                "status": PENDING,
                "attempts": 0,
                "created_at": self._now(),
            },
        )
        return result.rowcount == 1

    def claim_pending(self, limit: int = 200) -> list[OutboxItem]:
        """Claim up to ``limit`` items to send, oldest first (pending, or claimed with an
        expired lease). PostgreSQL skips rows another drainer holds (SKIP LOCKED)."""
        if limit < 1:
            raise ValueError(f"claim_pending(limit={limit}): limit must be at least 1")
        now = self._now()
        c = t.sf_outbox.c
        claimable = sa.or_(
            c.status == PENDING, sa.and_(c.status == CLAIMED, c.claimed_at < now - CLAIM_LEASE)
        )
        with self.write() as conn:  # type: ignore[attr-defined]
            query = sa.select(t.sf_outbox).where(claimable).order_by(c.id).limit(limit)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    t.sf_outbox.update()
                    .where(c.id.in_([row.id for row in rows]))
                    .values(status=CLAIMED, claimed_at=now, attempts=c.attempts + 1)
                )
        return [OutboxItem(row.id, row.sobject, row.record_id, dict(row.fields)) for row in rows]

    def mark_sent(self, ids: Iterable[int]) -> None:
        wanted = sorted(set(ids))
        if not wanted:
            return
        with self.write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                t.sf_outbox.update()
                .where(t.sf_outbox.c.id.in_(wanted))
                .values(status=SENT, sent_at=self._now(), last_error=None)
            )

    def mark_failed(self, item_id: int, error: str, *, retryable: bool) -> None:
        """A retryable failure goes back to pending (sent again on the next drain); a
        permanent one stays failed with its error for an operator."""
        with self.write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                t.sf_outbox.update()
                .where(t.sf_outbox.c.id == item_id)
                .values(
                    status=PENDING if retryable else FAILED,
                    last_error=error[:2000],
                    claimed_at=None,
                )
            )

    def outbox_health(self) -> OutboxHealth:
        """Counts by status and the ages of the oldest waiting and held rows, in one read."""
        now = self._now()
        c = t.sf_outbox.c
        with self.engine.connect() as conn:
            counts = dict(
                conn.execute(sa.select(c.status, sa.func.count()).group_by(c.status)).all()
            )
            oldest_pending = conn.execute(
                sa.select(sa.func.min(c.created_at)).where(c.status == PENDING)
            ).scalar()
            oldest_claim = conn.execute(
                sa.select(sa.func.min(c.claimed_at)).where(c.status == CLAIMED)
            ).scalar()
            expired = conn.execute(
                sa.select(sa.func.count()).where(
                    c.status == CLAIMED, c.claimed_at < now - CLAIM_LEASE
                )
            ).scalar()
        return OutboxHealth(
            by_status={s: int(counts.get(s, 0)) for s in (PENDING, CLAIMED, SENT, FAILED)},
            oldest_pending_age_s=_age(now, oldest_pending),
            oldest_claimed_age_s=_age(now, oldest_claim),
            expired_claims=int(expired or 0),
        )

    def outbox(self, status: str | None = None, *, record_id: str | None = None) -> list[OutboxRow]:
        c = t.sf_outbox.c
        query = sa.select(t.sf_outbox).order_by(c.id)
        if status is not None:
            query = query.where(c.status == status)
        if record_id is not None:
            query = query.where(c.record_id == record_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            OutboxRow(
                row.id,
                row.sobject,
                row.record_id,
                dict(row.fields),
                row.status,
                row.attempts,
                row.last_error,
                row.created_at,
                row.sent_at,
            )
            for row in rows
        ]


def _age(now: datetime, since: datetime | None) -> float | None:
    if since is None:
        return None
    if since.tzinfo is None:
        since = since.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - since).total_seconds())
