"""The Salesforce outbox in the ledger (mixed into ``Ledger``): dirty fields per record.

One row per record. Processing *marks fields dirty* in its own transaction; it never
stores values. The drain (``kpi_pipeline.app.writeback``) claims rows, reads the ledger's
current values of their dirty fields and sends them, so a re-send after an uncertain
outcome sends today's truth and an older change can never overwrite a newer one.

Claims carry a *lease* and a token. A live drain renews its lease; a drainer that died
(kill -9 between the REST call and the confirmation) lets its rows be retaken once the
lease runs out, by any drain: a batch run, a re-sync run or ``writeback_sensor``'s idle
drain. A confirmation is accepted only from the token holder, and a row marked dirty
again while it was out (``generation`` moved) stays pending, so the newer value goes
out next.

The row also keeps what Salesforce *confirmed* per field: the order rules
(``kpi_pipeline.core.workloads.writeback_fields``) compare against it, and unchanged values
are not sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import insert_ignore
from kpi_pipeline.core.canonical import canonical_value
from kpi_pipeline.core.outbox import Claim
from kpi_pipeline.core.workloads.writeback_fields import dirty_names

PENDING = "pending"
CLAIMED = "claimed"
SENT = "sent"
FAILED = "failed"
STATUSES = (PENDING, CLAIMED, SENT, FAILED)
DEFAULT_LEASE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row with its bookkeeping, for operators and tests."""

    id: int
    sobject: str
    record_id: str
    dirty: list[str]
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    dirtied_at: datetime | None
    sent_at: datetime | None
    confirmed: dict[str, Any]


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


class OutboxMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def mark_dirty(
        self, conn: sa.Connection, sobject: str, record_id: str, names: Iterable[str]
    ) -> bool:
        """Mark fields of a record to be written back (in the caller's transaction).

        Their values are read from the ledger when the drain sends them. Returns False
        when nothing changed (the fields were already waiting)."""
        wanted = dirty_names(sobject, names)
        if not wanted:
            return False
        now = self._now()
        inserted = conn.execute(
            insert_ignore(conn, t.sf_outbox, ["sobject", "record_id"]).values(
                sobject=sobject,
                record_id=record_id,
                dirty=wanted,
                generation=1,
                status=PENDING,
                attempts=0,
                created_at=now,
                dirtied_at=now,
                confirmed={},
            )
        )
        if inserted.rowcount == 1:
            return True
        c = t.sf_outbox.c
        query = sa.select(c.id, c.dirty, c.status, c.dirtied_at).where(
            c.sobject == sobject, c.record_id == record_id
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).one()
        dirty = sorted(set(row.dirty) | set(wanted))
        if row.status == PENDING and dirty == sorted(row.dirty):
            return False  # already waiting; the drain reads the newest values anyway
        conn.execute(
            t.sf_outbox.update()
            .where(c.id == row.id)
            .values(
                dirty=dirty,
                # A claimed row keeps its claim: the moved generation makes its confirmation
                # leave it pending, so the value changed meanwhile goes out next.
                generation=c.generation + 1,
                status=CLAIMED if row.status == CLAIMED else PENDING,
                dirtied_at=row.dirtied_at if row.status in (PENDING, CLAIMED) else now,
            )
        )
        return True

    def claim_dirty(self, limit: int = 200, *, lease: timedelta = DEFAULT_LEASE) -> list[Claim]:
        """Claim up to ``limit`` rows with dirty fields, longest waiting first: pending
        ones, and claimed ones whose lease ran out (their drainer died). PostgreSQL skips
        rows another drainer is claiming (SKIP LOCKED)."""
        if limit < 1:
            raise ValueError(f"claim_dirty(limit={limit}): limit must be at least 1")
        now = self._now()
        token = str(uuid.uuid4())
        c = t.sf_outbox.c
        claimable = sa.or_(c.status == PENDING, sa.and_(c.status == CLAIMED, c.lease_until < now))
        with self.write() as conn:  # type: ignore[attr-defined]
            query = (
                sa.select(t.sf_outbox).where(claimable).order_by(c.dirtied_at, c.id).limit(limit)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    t.sf_outbox.update()
                    .where(c.id.in_([row.id for row in rows]))
                    .values(
                        status=CLAIMED,
                        claim_token=token,
                        claimed_at=now,
                        lease_until=now + lease,
                        attempts=c.attempts + 1,
                    )
                )
        return [
            Claim(
                row.id,
                row.sobject,
                row.record_id,
                tuple(row.dirty),
                row.generation,
                token,
                dict(row.confirmed or {}),
                row.dirtied_at,
            )
            for row in rows
        ]

    def renew_claims(self, token: str, *, lease: timedelta = DEFAULT_LEASE) -> set[int]:
        """Extend the lease of the rows ``token`` still holds; returns their ids (a row
        retaken by another drainer after this one's lease ran out is no longer among them)."""
        c = t.sf_outbox.c
        held = sa.and_(c.claim_token == token, c.status == CLAIMED)
        with self.write() as conn:  # type: ignore[attr-defined]
            ids = list(conn.execute(_in_id_order_for_update(sa.select(c.id).where(held))).scalars())
            if ids:
                conn.execute(
                    t.sf_outbox.update()
                    .where(c.id.in_(ids))
                    .values(lease_until=self._now() + lease)
                )
            return set(ids)

    def confirm_sent(self, token: str, sent: Sequence[tuple[Claim, Mapping[str, Any]]]) -> None:
        """Salesforce confirmed these values. Each row becomes sent, or pending again when it
        was marked dirty meanwhile; the values join what the row records as confirmed.
        A row that this token no longer holds is left to its new holder."""
        if not sent:
            return
        now = self._now()
        c = t.sf_outbox.c
        with self.write() as conn:  # type: ignore[attr-defined]
            # Locked while read (PostgreSQL): a batch marking one of these rows dirty now
            # either commits first, and the generation read here has moved, or waits for
            # this confirmation; read unlocked, its new mark could be settled as sent.
            current = {
                row.id: row
                for row in conn.execute(
                    _in_id_order_for_update(
                        sa.select(c.id, c.generation, c.confirmed).where(
                            c.id.in_([claim.id for claim, _ in sent]), c.claim_token == token
                        )
                    )
                )
            }
            settled: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
            for claim, values in sent:
                row = current.get(claim.id)
                if row is None:
                    continue
                confirmed = canonical_value({**(row.confirmed or {}), **values})
                clean = row.generation == claim.generation
                settled[clean].append({"row_id": claim.id, "row_confirmed": confirmed})
            # One many-row statement per outcome, not one statement a row (a drain settles
            # up to its batch size at once; on PostgreSQL each statement was a round trip).
            for clean, rows in settled.items():
                if rows:
                    conn.execute(_settle_sent(clean, token, now), rows)

    def release_claims(
        self,
        token: str,
        ids: Iterable[int],
        error: str,
        *,
        retryable: bool,
        claimed_generations: Mapping[int, int] | None = None,
    ) -> None:
        """Give rows back: pending for the next drain (retryable), or failed for good with the
        error for an operator (marking them dirty again retries them).

        ``claimed_generations`` (row id -> its generation when claimed): a row refused for
        good that was marked dirty again while it was being sent holds values the org has not
        refused yet, so it goes back to pending, not to failed."""
        wanted = sorted(set(ids))
        if not wanted:
            return
        c = t.sf_outbox.c
        with self.write() as conn:  # type: ignore[attr-defined]
            current = dict(
                conn.execute(
                    _in_id_order_for_update(
                        sa.select(c.id, c.generation).where(
                            c.id.in_(wanted), c.claim_token == token
                        )
                    )
                ).all()
            )
            claimed = claimed_generations or {}
            by_status: dict[str, list[int]] = {PENDING: [], FAILED: []}
            for row_id, generation in current.items():
                dirtied_since = claimed.get(row_id, generation) != generation
                by_status[PENDING if retryable or dirtied_since else FAILED].append(row_id)
            for status, rows in by_status.items():
                if rows:
                    conn.execute(
                        t.sf_outbox.update()
                        .where(c.id.in_(rows), c.claim_token == token)
                        .values(
                            status=status,
                            last_error=error[:2000],
                            claim_token=None,
                            lease_until=None,
                        )
                    )

    def outbox_health(self) -> OutboxHealth:
        """Counts by status and the ages of the oldest waiting and held rows, in one read."""
        now = self._now()
        c = t.sf_outbox.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    *(sa.func.count().filter(c.status == s) for s in STATUSES),
                    sa.func.min(c.dirtied_at).filter(c.status == PENDING),
                    sa.func.min(c.claimed_at).filter(c.status == CLAIMED),
                    sa.func.count().filter(c.status == CLAIMED, c.lease_until < now),
                )
            ).one()
        counts, (oldest_pending, oldest_claim, expired) = row[: len(STATUSES)], row[len(STATUSES) :]
        return OutboxHealth(
            by_status={s: int(n) for s, n in zip(STATUSES, counts, strict=True)},
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
                list(row.dirty),
                row.status,
                row.attempts,
                row.last_error,
                row.created_at,
                row.dirtied_at,
                row.sent_at,
                dict(row.confirmed or {}),
            )
            for row in rows
        ]


def _in_id_order_for_update(query: sa.Select[Any]) -> sa.Select[Any]:
    """``query`` locking its outbox rows in id order (PostgreSQL; SQLite's write transaction
    already excludes every other writer and ignores FOR UPDATE).

    A batch's outbox merge locks the rows it widens in id order too (``merge_outbox_marks``),
    so a drain settling rows beside it (the stream worker drains on a thread of its own,
    ``writeback_drain`` runs beside batch runs) waits for it instead of deadlocking: an
    UPDATE alone locks its rows in whatever order its plan visits them."""
    return query.order_by(t.sf_outbox.c.id).with_for_update()


def _age(now: datetime, since: Any) -> float | None:
    if since is None:
        return None
    if isinstance(since, str):  # SQLite returns aggregates of typed columns untyped
        since = datetime.fromisoformat(since)
    if since.tzinfo is None:
        since = since.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - since).total_seconds())


def _settle_sent(clean: bool, token: str, now: datetime) -> sa.Update:
    """The update of confirmed rows (``row_id``, ``row_confirmed`` per row) still held by
    ``token``: sent and clean, or pending again with their dirty fields kept when they
    were marked dirty after being claimed (``clean`` False)."""
    c = t.sf_outbox.c
    outcome: dict[str, Any] = (
        {"status": SENT, "dirty": [], "dirtied_at": None} if clean else {"status": PENDING}
    )
    return (
        t.sf_outbox.update()
        .where(c.id == sa.bindparam("row_id"), c.claim_token == token)
        .values(
            **outcome,
            confirmed=sa.bindparam("row_confirmed", type_=c.confirmed.type),
            sent_at=now,
            last_error=None,
            claim_token=None,
            lease_until=None,
        )
    )
