"""Re-sync windows: what one asks to re-read, and when the sensor runs them again."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kpi_pipeline.app.resync.errors import ResyncError
from kpi_pipeline.core.events import parse_sf_datetime
from kpi_pipeline.core.resync_windows import WINDOW_OPEN, ResyncWindow

REASON_GAP, REASON_OVERFLOW, REASON_REPLAY = "gap", "gap_overflow", "replay_id_invalid"
TIME_WINDOW_REASONS = frozenset({REASON_OVERFLOW, REASON_REPLAY})
RETRY_BASE = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=1)
MAX_RUN_KEY_PARTS_CHARS = 200


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _up_to_second(value: datetime) -> datetime:
    # SOQL dateTime literals have whole seconds; round the end up so nothing before it is cut off.
    floor = value.replace(microsecond=0)
    return floor if floor == value else floor + timedelta(seconds=1)


@dataclass
class ReadPlan:
    """What to read for one window: ids per entity, or entities over a time range."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    entities: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None


def plan_window(
    window: ResyncWindow, now: datetime, channel_entities: Callable[[str], Sequence[str]]
) -> ReadPlan:
    """What a window asks to re-read; ``ResyncError`` when its record cannot tell."""
    detail = window.detail
    if window.reason == REASON_GAP:
        entity = detail.get("entity")
        ids = [str(r) for r in detail.get("record_ids") or ()]
        if not entity or not ids:
            raise ResyncError(
                f"gap window {window.id} names no entity or record ids (detail {detail!r:.200}); "
                "it must come from BatchProcessor's gap handling"
            )
        if any("*" in rid for rid in ids):
            # Wildcard ids (field type conversions) stand for every record of the entity.
            return _time_plan([entity], window, now)
        # GAP_DELETE needs no special case: a record the query does not return is deleted.
        return ReadPlan(ids={entity: ids})
    if window.reason == REASON_OVERFLOW:
        entity = detail.get("entity")
        return _time_plan(
            [entity] if entity else list(channel_entities(window.channel)), window, now
        )
    if window.reason == REASON_REPLAY:
        return _time_plan(list(channel_entities(window.channel)), window, now)
    raise ResyncError(
        f"resync window {window.id} has reason {window.reason!r}; the re-sync handles "
        f"{[REASON_GAP, REASON_OVERFLOW, REASON_REPLAY]}"
    )


def _time_plan(entities: list[str], window: ResyncWindow, now: datetime) -> ReadPlan:
    # No known start (the cursor never saw a commit time): re-read the entities in full.
    since = _time(window.from_time_ms) if window.from_time_ms is not None else _time(0)
    return ReadPlan(entities=entities, since=since, until=_up_to_second(now))


def attempts(window: ResyncWindow) -> int:
    return int(window.detail.get("resync_attempts") or 0)


def windows_due(windows: Iterable[ResyncWindow], now: datetime) -> list[ResyncWindow]:
    """Open windows worth a run now: never tried, or failed long enough ago (the wait
    doubles per failed attempt, from one minute up to an hour)."""
    due = []
    for window in windows:
        if window.status != WINDOW_OPEN:
            continue
        failed_at = parse_sf_datetime(window.detail.get("resync_failed_at"))
        tries = attempts(window)
        if failed_at is None or tries == 0:
            due.append(window)
            continue
        wait = min(RETRY_MAX, RETRY_BASE * 2 ** min(tries - 1, 10))
        if now >= failed_at + wait:
            due.append(window)
    return due


def run_key_for(windows: Iterable[ResyncWindow]) -> str:
    """The open windows and their attempt counts: the same set never launches twice, and a
    failed attempt (which bumps its count) may be retried."""
    parts = ",".join(f"{w.id}.{attempts(w)}" for w in sorted(windows, key=lambda w: w.id))
    if len(parts) > MAX_RUN_KEY_PARTS_CHARS:  # many windows: a digest keeps the key short
        parts = hashlib.sha256(parts.encode()).hexdigest()
    return f"resync:{parts}"
