"""Re-sync windows as data: spans of changes CDC did not deliver, which the ledger records
(gap events, GAP_OVERFLOW, refused replay ids) and the re-sync closes over REST.

Shared by the ledger adapter, which stores them, and the re-sync use case, which reads them
through its port (``kpi_pipeline.app.resync.ports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

WINDOW_OPEN = "open"
WINDOW_CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ResyncGap:
    """A span of changes CDC did not deliver, as it is detected: where it starts (a replay
    id, a commit time or both), where it ends when that is known, and what was seen. The
    ledger records it as a ``ResyncWindow``."""

    channel: str
    reason: str
    from_replay: bytes | None
    from_time_ms: int | None
    to_time_ms: int | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResyncWindow:
    id: int
    channel: str
    reason: str
    from_replay_hex: str | None
    from_time_ms: int | None
    to_time_ms: int | None
    detail: dict[str, Any]
    detected_at: datetime
    status: str
    closed_at: datetime | None
