"""Fault injection and observations of the Pub/Sub server (``RunningPubSubServer.faults``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    """Fault injection and observations; thread-safe, armed by tests and the simulator."""

    max_outstanding_seen: int = 0
    subscribe_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reset_after: int | None = None
    _close_after: int | None = None
    _unavailable_calls: int = 0
    silent: bool = False

    def reset_stream_after(self, events: int) -> None:
        """After `events` more events are sent, abort the stream with UNAVAILABLE (a network reset)."""
        with self._lock:
            self._reset_after = events

    def close_stream_after(self, events: int) -> None:
        """After `events` more events are sent, end the stream normally (server-side close)."""
        with self._lock:
            self._close_after = events

    def silence_streams(self, silent: bool = True) -> None:
        """Open streams stop sending anything, keepalives included (a half-open connection)."""
        with self._lock:
            self.silent = silent

    def service_unavailable_next(self, calls: int) -> None:
        """The next `calls` RPCs fail with INTERNAL + ``service.unavailable``."""
        with self._lock:
            self._unavailable_calls = calls

    def take_unavailable(self) -> bool:
        with self._lock:
            if self._unavailable_calls > 0:
                self._unavailable_calls -= 1
                return True
            return False

    def observe_outstanding(self, requested_total: int) -> None:
        with self._lock:
            self.max_outstanding_seen = max(self.max_outstanding_seen, requested_total)

    def allow(self, count: int) -> tuple[int, str | None]:
        """How many of `count` events may go out, and the action ('reset'/'close') after them."""
        with self._lock:
            for attr, action in (("_reset_after", "reset"), ("_close_after", "close")):
                budget = getattr(self, attr)
                if budget is not None and count >= budget:
                    setattr(self, attr, None)
                    return budget, action
            for attr in ("_reset_after", "_close_after"):
                if getattr(self, attr) is not None:
                    setattr(self, attr, getattr(self, attr) - count)
            return count, None
