"""Where a deployment stands, and whether it is ready: one reading for every operator surface.

``gather_status`` reads the ledger (replay store, pending batches, stream leases, dead
letters, outbox, re-sync windows), the policy in force and the newest KPI partition on disk;
``readiness_reasons`` judges that reading against ``Thresholds`` (one setting per reason).
No Dagster and no HTTP framework here: ``/status`` and ``/readyz`` (``kpi_pipeline.web.server``),
``kpi-pipeline status`` and the ``live_path_health`` check (through
``kpi_pipeline.core.live_health``) all use this code, so they cannot disagree.

Not ready, with the reason's code:

* ``org_unreachable`` / ``org_auth_failed``: the last org probe (a token and a one-row SOQL
  query, at most every ``KPI_READY_ORG_PROBE_SECONDS``) failed;
* ``stream_not_alive``: stream mode, and no live ``cdc_stream`` run holds a channel;
* ``no_progress``: stream mode, and a channel's durable replay id has not moved (no event,
  no keepalive) for ``KPI_READY_PROGRESS_STALE_SECONDS``;
* ``processing_lag``: the oldest unprocessed batch has waited over
  ``KPI_READY_PROCESSING_LAG_SECONDS``;
* ``stuck_batches``: ... over ``KPI_CDC_PROCESSING_ALERT_SECONDS`` (its runs keep failing);
* ``dead_letters``: events were dead-lettered within ``KPI_READY_DEAD_LETTER_WINDOW_SECONDS``;
* ``outbox_backlog``: more than ``KPI_READY_OUTBOX_BACKLOG_ROWS`` outbox rows wait, or the
  oldest has waited over ``KPI_READY_OUTBOX_AGE_SECONDS``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kpi_pipeline.config import Settings
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.live_health import processing_health


@dataclass(frozen=True, slots=True)
class OrgProbe:
    """The org's answer to a token request and a one-row query."""

    ok: bool
    problem: str | None  # None | "org_unreachable" | "org_auth_failed"
    detail: str
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    channel: str
    replay_id: str | None  # hex of the durable replay id
    newest_commit_age_s: float | None  # now - commit of the newest change staged (ingest lag)
    position_age_s: float | None  # since the replay id last moved (events or keepalives)
    pending_batches: int
    oldest_pending_age_s: float | None  # processing lag: the oldest unprocessed batch's wait
    stream_alive: bool | None  # None in sensor mode
    lease_holder: str | None


@dataclass(frozen=True, slots=True)
class Status:
    mode: str
    checked_at: datetime
    channels: tuple[ChannelStatus, ...]
    dead_letters_by_reason: dict[str, int]
    dead_letters_recent: int  # within the readiness window
    outbox_by_status: dict[str, int]
    outbox_backlog: int
    outbox_oldest_pending_age_s: float | None
    open_resync_windows: int
    policy_version: str | None
    last_kpi_partition: str | None
    org: OrgProbe | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checked_at"] = self.checked_at.isoformat()
        if self.org is not None:
            out["org"]["checked_at"] = self.org.checked_at.isoformat()
        return _rounded(out)


@dataclass(frozen=True, slots=True)
class Thresholds:
    processing_lag_s: float
    stuck_s: float
    progress_stale_s: float
    dead_letter_window_s: float
    outbox_backlog_rows: int
    outbox_age_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(**{name: getattr(settings, key) for name, key in THRESHOLD_SETTINGS.items()})


# Each readiness threshold and the setting it is read from.
THRESHOLD_SETTINGS = {
    "processing_lag_s": "ready_processing_lag_seconds",
    "stuck_s": "cdc_processing_alert_seconds",
    "progress_stale_s": "ready_progress_stale_seconds",
    "dead_letter_window_s": "ready_dead_letter_window_seconds",
    "outbox_backlog_rows": "ready_outbox_backlog_rows",
    "outbox_age_s": "ready_outbox_age_seconds",
}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str
    threshold: float | int | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    @property
    def ready(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "reasons": [asdict(r) for r in self.reasons]}


def gather_status(
    ledger: Any,
    settings: Settings,
    *,
    now: datetime,
    org: OrgProbe | None = None,
    run_ended_badly: Any = None,
) -> Status:
    """Read everything ``/status`` shows (a dozen small queries; no org call here)."""
    health = processing_health(
        ledger,
        settings.cdc_channels,
        mode=settings.cdc_mode,
        now=now,
        run_ended_badly=run_ended_badly,
    )
    positions = {p.channel: p for p in ledger.replay_positions()}
    outbox = ledger.outbox_health()
    since = now - timedelta(seconds=settings.ready_dead_letter_window_seconds)
    dead_letters, dead_letters_recent = ledger.dead_letter_summary(since=since)
    return Status(
        mode=settings.cdc_mode,
        checked_at=now,
        channels=tuple(_channel(ch, positions.get(ch.channel), now) for ch in health.channels),
        dead_letters_by_reason=dead_letters,
        dead_letters_recent=dead_letters_recent,
        outbox_by_status=dict(outbox.by_status),
        outbox_backlog=outbox.backlog,
        outbox_oldest_pending_age_s=outbox.oldest_pending_age_s,
        open_resync_windows=len(ledger.open_resync_windows()),
        policy_version=_policy_version(settings),
        last_kpi_partition=last_kpi_partition(settings.data_dir),
        org=org,
    )


def _channel(health: Any, position: Any, now: datetime) -> ChannelStatus:
    commit_age = position_age = None
    if position is not None:
        position_age = (now - position.updated_at).total_seconds()
        if position.commit_ms is not None:
            commit_age = max(0.0, now.timestamp() - position.commit_ms / 1000.0)
    return ChannelStatus(
        channel=health.channel,
        replay_id=replay_id_hex(position.replay_id) if position is not None else None,
        newest_commit_age_s=commit_age,
        position_age_s=position_age,
        pending_batches=health.pending_batches,
        oldest_pending_age_s=health.oldest_pending_age_s,
        stream_alive=health.stream_alive,
        lease_holder=health.lease_holder,
    )


def readiness_reasons(status: Status, thresholds: Thresholds) -> Readiness:
    """Every reason the deployment is not ready now (empty: ready)."""
    reasons: list[Reason] = []
    if status.org is not None and not status.org.ok:
        reasons.append(Reason(status.org.problem or "org_unreachable", status.org.detail))
    for ch in status.channels:
        reasons += _channel_reasons(ch, status.mode, thresholds)
    if status.dead_letters_recent:
        window = thresholds.dead_letter_window_s
        message = (
            f"{status.dead_letters_recent} event(s) dead-lettered in the last {window:.0f} s "
            "(kpi-pipeline ledger dead-letters)"
        )
        reasons.append(Reason("dead_letters", message, window))
    reasons += _outbox_reasons(status, thresholds)
    return Readiness(tuple(reasons))


def _channel_reasons(ch: ChannelStatus, mode: str, limits: Thresholds) -> list[Reason]:
    found = []
    position_age = ch.position_age_s or 0.0
    if ch.stream_alive is False:
        found.append(Reason("stream_not_alive", f"{ch.channel}: no live cdc_stream run holds it"))
    elif mode == "stream" and position_age > limits.progress_stale_s:
        message = (
            f"{ch.channel}: the durable replay id has not moved for {position_age:.0f} s "
            "(no event, no keepalive)"
        )
        found.append(Reason("no_progress", message, limits.progress_stale_s))
    waited = ch.oldest_pending_age_s or 0.0
    if waited > limits.stuck_s:
        message = (
            f"{ch.channel}: {ch.pending_batches} batch(es) pending, the oldest for {waited:.0f} s"
        )
        found.append(Reason("stuck_batches", message, limits.stuck_s))
    elif waited > limits.processing_lag_s:
        message = f"{ch.channel}: the oldest unprocessed batch has waited {waited:.0f} s"
        found.append(Reason("processing_lag", message, limits.processing_lag_s))
    return found


def _outbox_reasons(status: Status, limits: Thresholds) -> list[Reason]:
    found = []
    if status.outbox_backlog > limits.outbox_backlog_rows:
        message = f"{status.outbox_backlog} write-back outbox rows wait to be sent"
        found.append(Reason("outbox_backlog", message, limits.outbox_backlog_rows))
    age = status.outbox_oldest_pending_age_s or 0.0
    if age > limits.outbox_age_s:
        message = f"the oldest write-back outbox row has waited {age:.0f} s"
        found.append(Reason("outbox_backlog", message, limits.outbox_age_s))
    return found


def last_kpi_partition(data_dir: Path) -> str | None:
    """The newest day with a KPI CSV written (``DATA_DIR/kpis/<rollup>/<day>.csv``)."""
    days = [p.stem for p in (Path(data_dir) / "kpis").glob("*/*.csv")]
    return max(days) if days else None


def _policy_version(settings: Settings) -> str | None:
    """The version of the policy file in force. Loading and validating it costs more than the
    rest of a status, so it is read again only when the file changes (path, mtime, size)."""
    from kpi_pipeline.core.policy.load import default_policy_path

    path = Path(settings.policy_file or default_policy_path())
    try:
        stat = path.stat()
    except OSError as exc:
        return _unreadable(exc)
    return _policy_version_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _policy_version_of(path: str, _mtime_ns: int, _size: int) -> str:
    from kpi_pipeline.core.policy.load import load_policy

    try:
        return load_policy(path).version
    except Exception as exc:  # a broken policy file is a status to show, not a crash
        return _unreadable(exc)


def _unreadable(exc: Exception) -> str:
    return f"unreadable: {type(exc).__name__}: {exc}"[:200]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def status_and_readiness(
    status: Status, thresholds: Thresholds
) -> tuple[dict[str, Any], Readiness]:
    readiness = readiness_reasons(status, thresholds)
    return {**status.to_dict(), "readiness": readiness.to_dict()}, readiness
