"""Channel leases in the ledger (mixed into ``Ledger``): one consumer per CDC channel.

A stream run *holds* a channel while its lease row names it and has not expired. The
holder renews the lease (``renew_leases``) well within its time to live; a holder that
died (kill -9, a lost host) stops renewing, and once the lease expires another run takes
the channel over. Expiry is judged by the ledger's clock, so the processes need no clock
agreement beyond the database's own time of day on the machine that writes.

The lease is what keeps two consumers apart; the replay store's compare-and-set is the
fence behind it: a holder that lost its lease while stalled can no longer advance the
replay id (the new holder moved it), so it cannot stage anything twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import insert_ignore


@dataclass(frozen=True, slots=True)
class ChannelLease:
    channel: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


class LeaseMixin:
    engine: sa.Engine

    def _now(self) -> datetime: ...  # provided by Ledger

    def acquire_leases(self, holder: str, channels: Iterable[str], *, ttl: timedelta) -> set[str]:
        """Take every channel that is free, expired or already ours; returns those now held."""
        now = self._now()
        c = t.cdc_channel_leases.c
        held: set[str] = set()
        with self.write() as conn:  # type: ignore[attr-defined]
            for channel in sorted(set(channels)):
                conn.execute(
                    insert_ignore(conn, t.cdc_channel_leases, ["channel"]).values(
                        channel=channel, holder=holder, acquired_at=now, expires_at=now + ttl
                    )
                )
                taken = conn.execute(
                    t.cdc_channel_leases.update()
                    .where(
                        c.channel == channel,
                        sa.or_(c.holder == holder, c.expires_at <= now),
                    )
                    .values(
                        holder=holder,
                        expires_at=now + ttl,
                        acquired_at=sa.case((c.holder == holder, c.acquired_at), else_=now),
                    )
                )
                if taken.rowcount == 1:
                    held.add(channel)
        return held

    def renew_leases(self, holder: str, *, ttl: timedelta) -> set[str]:
        """Extend the holder's unexpired leases; returns the channels it still holds (a lease
        that expired before the renewal may already be someone else's)."""
        now = self._now()
        c = t.cdc_channel_leases.c
        mine = sa.and_(c.holder == holder, c.expires_at > now)
        with self.write() as conn:  # type: ignore[attr-defined]
            conn.execute(t.cdc_channel_leases.update().where(mine).values(expires_at=now + ttl))
            return set(conn.execute(sa.select(c.channel).where(c.holder == holder)).scalars())

    def release_leases(self, holder: str) -> None:
        """A holder that ends cleanly hands its channels over at once: its leases expire now
        (the rows stay, so health checks can tell a handover from a stream that is gone)."""
        c = t.cdc_channel_leases.c
        now = self._now()
        with self.write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                t.cdc_channel_leases.update()
                .where(c.holder == holder, c.expires_at > now)
                .values(expires_at=now)
            )

    def channel_leases(self) -> list[ChannelLease]:
        """Every lease row, expired and released ones included (for operators and health
        checks: ``expires_at`` is when the last holder stopped holding it)."""
        c = t.cdc_channel_leases.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.cdc_channel_leases).order_by(c.channel)).all()
        return [ChannelLease(r.channel, r.holder, r.acquired_at, r.expires_at) for r in rows]
