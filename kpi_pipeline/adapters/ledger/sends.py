"""Outreach email sends in the ledger (mixed into ``Ledger``): at most one email per lead.

A send is *claimed* by writing its row as ``sending`` and committing before the email
goes out; only one claimant can win (the primary key, and a conditional UPDATE for a
``retry`` row), so two runs never both send. A row left ``sending`` (the process died
mid-call) or marked ``unconfirmed`` is never claimed again automatically: the email may
have gone out, and a second one is worse than none. An operator decides (``reset_send``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import insert_ignore
from kpi_pipeline.core.sends import (
    FAILED,
    FINAL_STATUSES,
    RETRY,
    SENDING,
    SENT,
    UNCONFIRMED,
)


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A template recommendation that has not been emailed (nor given up on) yet."""

    lead_id: str
    template_id: str
    decided_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class SendRow:
    lead_id: str
    template_id: str
    status: str
    attempts: int
    to_address: str | None
    error: str | None
    started_at: datetime | None
    sent_at: datetime | None


class SendsMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def unsent_recommendations(
        self, *, limit: int, decided_since: datetime | None = None
    ) -> list[PendingSend]:
        """Recommendations with no send row or a ``retry`` one, oldest decision first."""
        if limit < 1:
            raise ValueError(f"unsent_recommendations(limit={limit}): limit must be at least 1")
        rec, send = t.template_recommendations.c, t.outreach_sends.c
        query = (
            sa.select(rec.lead_id, rec.template_id, rec.decided_at, send.attempts)
            .select_from(
                t.template_recommendations.outerjoin(t.outreach_sends, send.lead_id == rec.lead_id)
            )
            .where(sa.or_(send.lead_id.is_(None), send.status == RETRY))
            .order_by(rec.decided_at, rec.lead_id)
            .limit(limit)
        )
        if decided_since is not None:
            query = query.where(rec.decided_at >= decided_since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [PendingSend(r.lead_id, r.template_id, r.decided_at, r.attempts or 0) for r in rows]

    def claim_send(self, lead_id: str, template_id: str, to_address: str | None) -> bool:
        """Mark the lead's send ``sending`` (committed on return); False if another run
        holds it or it already reached an outcome other than ``retry``."""
        now = self._now()
        with self.write() as conn:  # type: ignore[attr-defined]
            inserted = conn.execute(
                insert_ignore(conn, t.outreach_sends, ["lead_id"]).values(
                    lead_id=lead_id,
                    template_id=template_id,
                    status=SENDING,
                    attempts=1,
                    to_address=to_address,
                    started_at=now,
                    updated_at=now,
                )
            )
            if inserted.rowcount == 1:
                return True
            c = t.outreach_sends.c
            retried = conn.execute(
                t.outreach_sends.update()
                .where(c.lead_id == lead_id, c.status == RETRY)
                .values(
                    status=SENDING,
                    template_id=template_id,
                    attempts=c.attempts + 1,
                    to_address=to_address,
                    error=None,
                    started_at=now,
                    updated_at=now,
                )
            )
            return retried.rowcount == 1

    def finish_send(self, lead_id: str, status: str, error: str | None = None) -> None:
        """Record the outcome of a claimed send (only a ``sending`` row changes)."""
        if status not in FINAL_STATUSES | {RETRY}:
            raise ValueError(
                f"finish_send({lead_id!r}, {status!r}): status must be one of "
                f"{sorted(FINAL_STATUSES | {RETRY})}"
            )
        now = self._now()
        c = t.outreach_sends.c
        with self.write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                t.outreach_sends.update()
                .where(c.lead_id == lead_id, c.status == SENDING)
                .values(
                    status=status,
                    error=error[:2000] if error else None,
                    sent_at=now if status == SENT else None,
                    updated_at=now,
                )
            )

    def reset_send(self, lead_id: str) -> bool:
        """Operator action: make an ``unconfirmed``, ``sending`` or ``failed`` send eligible
        again (after checking in Salesforce that no email went out). True if reset."""
        c = t.outreach_sends.c
        with self.write() as conn:  # type: ignore[attr-defined]
            result = conn.execute(
                t.outreach_sends.update()
                .where(c.lead_id == lead_id, c.status.in_([SENDING, UNCONFIRMED, FAILED]))
                .values(status=RETRY, updated_at=self._now())
            )
        return result.rowcount == 1

    def outreach_sends(
        self, status: str | None = None, *, lead_ids: Iterable[str] | None = None
    ) -> list[SendRow]:
        c = t.outreach_sends.c
        query = sa.select(t.outreach_sends).order_by(c.lead_id)
        if status is not None:
            query = query.where(c.status == status)
        if lead_ids is not None:
            query = query.where(c.lead_id.in_(sorted(set(lead_ids))))
        with self.engine.connect() as conn:
            return [_send_row(row) for row in conn.execute(query)]


def _send_row(row: sa.Row[Any]) -> SendRow:
    return SendRow(
        row.lead_id,
        row.template_id,
        row.status,
        row.attempts,
        row.to_address,
        row.error,
        row.started_at,
        row.sent_at,
    )
