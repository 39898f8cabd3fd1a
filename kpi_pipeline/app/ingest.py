"""One sensor tick of CDC ingestion, without Dagster: drain each channel into a durable batch.

The order of effects is what makes delivery safe (CONTRACTS.md §1):

1. fetch a bounded batch from the Pub/Sub API, starting after the cursor's replay id;
2. stage it durably in the ledger inbox (keyed by channel and replay id, linked to the
   replay id it started after);
3. only then hand back the new cursor and the batch to launch.

If the process dies between 2 and 3, the cursor did not move. The next tick finds the
batch already staged after the same replay id and re-emits it under the same run key
(Dagster dedups run keys), without fetching or staging again.

A corrupted or expired replay id must not wedge the sensor: the gap is recorded as a
re-sync window in the ledger and the channel restarts from the configured preset.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kpi_pipeline.core.cursor import ChannelCursor, SensorCursor
from kpi_pipeline.core.events import ChangeEvent, replay_id_hex
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)
_MAX_CHAIN_STEPS = 1000


class FetchResultLike(Protocol):
    events: list[RawEvent]
    latest_replay_id: bytes | None


class PubSubFetcher(Protocol):
    def fetch(
        self,
        channel: str,
        *,
        replay_id: bytes | None,
        preset: str,
        max_events: int,
        max_seconds: float,
        idle_return_s: float,
    ) -> FetchResultLike: ...

    def get_schema(self, schema_id: str) -> str: ...


@dataclass(frozen=True, slots=True)
class BatchToRun:
    batch_id: str
    channel: str
    event_count: int
    first_replay_hex: str
    last_replay_hex: str
    restaged: bool  # True when found already staged by an interrupted tick


@dataclass(frozen=True, slots=True)
class ChannelReport:
    channel: str
    replay_id_hex: str | None
    events: int
    by_change_type: dict[str, int]
    lag_seconds: float | None
    caught_up: bool
    resync_window_id: int | None = None
    undecodable: int = 0


@dataclass
class TickOutcome:
    cursor: SensorCursor
    batches: list[BatchToRun] = field(default_factory=list)
    reports: list[ChannelReport] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DrainLimits:
    max_events: int
    max_seconds: float
    initial_preset: str = "EARLIEST"
    on_invalid_replay: str = "EARLIEST"
    idle_return_seconds: float = 0.25


def drain_tick(
    *,
    channels: Sequence[str],
    cursor: SensorCursor,
    fetcher: PubSubFetcher,
    ledger: Any,
    decode: Callable[[RawEvent], ChangeEvent],
    limits: DrainLimits,
    now: Callable[[], float] = time.time,
    is_invalid_replay: Callable[[Exception], bool],
) -> TickOutcome:
    """Drain every channel once; see the module docstring for the ordering guarantees."""
    outcome = TickOutcome(cursor=cursor)
    for channel in channels:
        channel_cursor = outcome.cursor.for_channel(channel)
        already = _find_unacknowledged_batch(ledger, channel, channel_cursor)
        if already is not None:
            outcome.batches.append(already)
            outcome.cursor = outcome.cursor.with_channel(
                channel,
                channel_cursor.advanced(
                    bytes.fromhex(already.last_replay_hex),
                    batch_id=already.batch_id,
                    commit_ms=None,
                ),
            )
            outcome.reports.append(
                ChannelReport(
                    channel, already.last_replay_hex, already.event_count, {}, None, caught_up=False
                )
            )
            continue
        report, new_channel_cursor, batch = _drain_channel(
            channel, channel_cursor, fetcher, ledger, decode, limits, now, is_invalid_replay
        )
        outcome.cursor = outcome.cursor.with_channel(channel, new_channel_cursor)
        outcome.reports.append(report)
        if batch is not None:
            outcome.batches.append(batch)
    return outcome


def _after_key(channel_cursor: ChannelCursor) -> str:
    """The replay id a fetch starts after, as stored with the batch ('' = started from a preset)."""
    return replay_id_hex(channel_cursor.replay_id) if channel_cursor.replay_id is not None else ""


def _find_unacknowledged_batch(
    ledger: Any, channel: str, channel_cursor: ChannelCursor
) -> BatchToRun | None:
    """A batch staged after the cursor's replay id by a tick whose cursor was never committed.

    Follows the chain of batches (each remembers the replay id its fetch started after),
    skipping ones already done, so a cursor that fell behind (a crash, or a reset) catches
    up without fetching or staging anything twice. Returns the first batch not yet done.
    """
    after = _after_key(channel_cursor)
    for _ in range(_MAX_CHAIN_STEPS):
        staged = ledger.find_batch_after(channel, after)
        if staged is None:
            return None
        info = ledger.batch(staged.batch_id)
        if info is None or info.status != "done":
            return BatchToRun(
                batch_id=staged.batch_id,
                channel=channel,
                event_count=staged.count,
                first_replay_hex=staged.first_replay_hex,
                last_replay_hex=staged.last_replay_hex,
                restaged=True,
            )
        after = staged.last_replay_hex
    return None


def _drain_channel(
    channel: str,
    channel_cursor: ChannelCursor,
    fetcher: PubSubFetcher,
    ledger: Any,
    decode: Callable[[RawEvent], ChangeEvent],
    limits: DrainLimits,
    now: Callable[[], float],
    is_invalid_replay: Callable[[Exception], bool],
) -> tuple[ChannelReport, ChannelCursor, BatchToRun | None]:
    resync_window_id = None
    start_cursor = channel_cursor
    try:
        result = _fetch(fetcher, channel, channel_cursor, limits, limits.initial_preset)
    except Exception as exc:
        if not is_invalid_replay(exc):
            raise
        resync_window_id = _record_replay_gap(ledger, channel, channel_cursor, exc, limits)
        start_cursor = ChannelCursor(commit_ms=channel_cursor.commit_ms)
        result = _fetch(fetcher, channel, start_cursor, limits, limits.on_invalid_replay)

    events = list(result.events)
    if not events:
        new_cursor = start_cursor
        if result.latest_replay_id:
            # A keepalive's latest replay id: resume from a recent point after a quiet spell.
            new_cursor = start_cursor.advanced(
                result.latest_replay_id, batch_id=None, commit_ms=None
            )
        caught_up = bool(result.latest_replay_id)
        if caught_up:
            metrics.set_cdc_lag(channel, 0.0)  # nothing left to read: no lag, not the last batch's
        report = ChannelReport(
            channel,
            replay_id_hex(new_cursor.replay_id) if new_cursor.replay_id else None,
            0,
            {},
            0.0 if caught_up else None,
            caught_up=caught_up,
            resync_window_id=resync_window_id,
        )
        return report, new_cursor, None

    schemas = {
        schema_id: fetcher.get_schema(schema_id) for schema_id in {e.schema_id for e in events}
    }
    staged = ledger.stage_batch(channel, events, schemas, after_replay=_after_key(start_cursor))
    if staged.count == 0:
        # Every event was already staged by an earlier batch (e.g. after restarting from
        # EARLIEST): nothing new to run, just move past them.
        new_cursor = start_cursor.advanced(events[-1].replay_id, batch_id=None, commit_ms=None)
        report = ChannelReport(
            channel,
            replay_id_hex(events[-1].replay_id),
            0,
            {},
            None,
            caught_up=False,
            resync_window_id=resync_window_id,
        )
        return report, new_cursor, None
    by_type, newest_commit_ms, undecodable = _summarise(events, decode)
    for change_type, count in by_type.items():
        metrics.record_cdc_event(channel, change_type, count)
    lag = max(0.0, now() - newest_commit_ms / 1000.0) if newest_commit_ms else None
    if lag is not None:
        metrics.set_cdc_lag(channel, lag)
    new_cursor = start_cursor.advanced(
        events[-1].replay_id, batch_id=staged.batch_id, commit_ms=newest_commit_ms
    )
    batch = BatchToRun(
        batch_id=staged.batch_id,
        channel=channel,
        event_count=staged.count,
        first_replay_hex=staged.first_replay_hex,
        last_replay_hex=staged.last_replay_hex,
        restaged=not staged.newly_staged,
    )
    report = ChannelReport(
        channel,
        staged.last_replay_hex,
        len(events),
        dict(by_type),
        lag,
        caught_up=len(events) < limits.max_events,
        resync_window_id=resync_window_id,
        undecodable=undecodable,
    )
    return report, new_cursor, batch


def _fetch(
    fetcher: PubSubFetcher,
    channel: str,
    channel_cursor: ChannelCursor,
    limits: DrainLimits,
    preset: str,
):
    if channel_cursor.replay_id is not None:
        return fetcher.fetch(
            channel,
            replay_id=channel_cursor.replay_id,
            preset="CUSTOM",
            max_events=limits.max_events,
            max_seconds=limits.max_seconds,
            idle_return_s=limits.idle_return_seconds,
        )
    return fetcher.fetch(
        channel,
        replay_id=None,
        preset=preset,
        max_events=limits.max_events,
        max_seconds=limits.max_seconds,
        idle_return_s=limits.idle_return_seconds,
    )


def _record_replay_gap(
    ledger: Any, channel: str, channel_cursor: ChannelCursor, exc: Exception, limits: DrainLimits
) -> int:
    """Record the window a re-sync must close: from the last event we saw to wherever we restart."""
    log.warning(
        "replay id %s for %s was refused (%s); restarting from %s and recording a re-sync window",
        replay_id_hex(channel_cursor.replay_id) if channel_cursor.replay_id else None,
        channel,
        exc,
        limits.on_invalid_replay,
    )
    metrics.record_error("cdc_replay_invalid")
    return ledger.record_resync_window(
        ResyncGap(
            channel=channel,
            reason="replay_id_invalid",
            from_replay=channel_cursor.replay_id,
            from_time_ms=channel_cursor.commit_ms,
            to_time_ms=None,
            detail={"error": str(exc)[:500], "restart_preset": limits.on_invalid_replay},
        )
    )


def _summarise(
    events: Sequence[RawEvent], decode: Callable[[RawEvent], ChangeEvent]
) -> tuple[Counter, int | None, int]:
    """Counts by change type and newest commit time, for metrics and the cdc_events observation.

    Decoding failures are only counted here: the job dead-letters those events with their reason.
    """
    by_type: Counter = Counter()
    newest: int | None = None
    undecodable = 0
    for raw in events:
        try:
            event = decode(raw)
        except Exception:
            undecodable += 1
            by_type["UNDECODABLE"] += 1
            continue
        by_type[event.change_type] += 1
        commit = event.header.commit_timestamp
        newest = commit if newest is None or commit > newest else newest
    return by_type, newest, undecodable
