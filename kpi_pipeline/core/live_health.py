"""Is the live path keeping up? One answer for the health check, /metrics and operators.

Per channel, from the ledger alone (no org call, so it is cheap enough for every scrape):

* **pending batches**: staged but not processed, and how long the oldest has waited. A batch
  older than the alert threshold is *stuck* (its run died, or processing keeps failing);
* **stream alive** (stream mode): a ``cdc_stream`` run holds the channel's lease, or
  released it less than ``HANDOVER_GRACE`` ago (a generation handing over to the next).
  Otherwise nothing consumes the channel. Where the caller can ask Dagster about runs
  (``run_ended_badly``), a holder whose run failed or was canceled (a killed worker, once
  run monitoring has seen it) is not alive either, even before its lease runs out: a dead
  run gets no handover grace.

The lag of processed work (commit → batch processed) is the ``cdc_processing_lag_seconds``
histogram, observed when each batch is marked done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

HANDOVER_GRACE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    channel: str
    pending_batches: int
    oldest_pending_age_s: float | None
    lease_holder: str | None  # the stream run holding the channel now (None: nobody)
    stream_alive: bool | None  # None in sensor mode


@dataclass(frozen=True, slots=True)
class ProcessingHealth:
    mode: str
    channels: tuple[ChannelHealth, ...]

    def problems(self, *, stuck_after_s: float) -> list[str]:
        """Why the live path is not keeping up; empty when it is."""
        found = []
        for ch in self.channels:
            if (ch.oldest_pending_age_s or 0.0) > stuck_after_s:
                found.append(
                    f"{ch.channel}: {ch.pending_batches} batch(es) pending, the oldest for "
                    f"{ch.oldest_pending_age_s:.0f} s (limit {stuck_after_s:.0f} s)"
                )
            if ch.stream_alive is False:
                found.append(f"{ch.channel}: no live cdc_stream run holds it (stream mode)")
        return found

    def to_metadata(self) -> dict[str, Any]:
        return {
            ch.channel: {
                "pending_batches": ch.pending_batches,
                "oldest_pending_age_seconds": _round(ch.oldest_pending_age_s),
                "lease_holder": ch.lease_holder,
                "stream_alive": ch.stream_alive,
            }
            for ch in self.channels
        }


def processing_health(
    ledger: Any,
    channels: Sequence[str],
    *,
    mode: str,
    now: datetime,
    run_ended_badly: Callable[[str], bool] | None = None,
) -> ProcessingHealth:
    """Read pending batches and channel leases (two queries) into ``ProcessingHealth``.

    ``run_ended_badly(holder)``: whether the run that holds (or last held) a lease is known
    to have failed or been canceled; without it, only lease times count."""
    pending: dict[str, list[datetime]] = {}
    for info in ledger.pending_batches():
        pending.setdefault(info.channel, []).append(info.staged_at)
    leases = {lease.channel: lease for lease in ledger.channel_leases()}
    return ProcessingHealth(
        mode,
        tuple(
            _channel(c, pending.get(c, []), leases.get(c), mode, now, run_ended_badly)
            for c in channels
        ),
    )


def _channel(
    channel: str,
    staged: list[datetime],
    lease: Any,
    mode: str,
    now: datetime,
    run_ended_badly: Callable[[str], bool] | None,
) -> ChannelHealth:
    oldest = (now - min(staged)).total_seconds() if staged else None
    holder = lease.holder if lease is not None and lease.expires_at > now else None
    alive = None
    if mode == "stream":
        alive = lease is not None and lease.expires_at > now - HANDOVER_GRACE
        if alive and run_ended_badly is not None and run_ended_badly(lease.holder):
            alive = False
    return ChannelHealth(channel, len(staged), oldest, holder, alive)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
