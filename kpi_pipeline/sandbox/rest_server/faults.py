"""Failures the REST server can be told to inject (``RunningRestServer.faults``).

REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW, HTTP 500 or dropped connections, expired
sessions, and a delay between applying an update and answering it."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kpi_pipeline.sandbox.tokens import TokenRegistry


class RestFaults:
    """Injected failures; each call arms the next matching requests. Thread-safe."""

    def __init__(self, registry: TokenRegistry):
        self._registry = registry
        self._lock = threading.Lock()
        self._limit_left = 0
        self._limit_daily = False
        self._locks: dict[str, int] = {}
        self._fail_after = 0
        self._fail_left = 0
        self._fail_drop = False
        self._update_delay_s = 0.0

    def delay_updates(self, seconds: float) -> None:
        """Every record update (single or sObject Collections) is answered ``seconds`` after
        it was applied (0: at once). The client then waits with the update already in the org
        and its outcome unknown to it: a drainer killed in that window is the hard-kill case
        the write-back must survive, and the delay makes the window wide enough to hit."""
        if seconds < 0:
            raise ValueError(f"delay_updates needs seconds >= 0, got {seconds}")
        with self._lock:
            self._update_delay_s = float(seconds)

    def update_delay(self) -> float:
        with self._lock:
            return self._update_delay_s

    def request_limit_exceeded_next(self, n: int, *, daily: bool = False) -> None:
        """The next n data requests get 403 REQUEST_LIMIT_EXCEEDED (concurrent, or the daily total)."""
        with self._lock:
            self._limit_left, self._limit_daily = n, daily

    def lock_rows(self, record_ids: Iterable[str], times: int = 1) -> None:
        """The next ``times`` updates of each record fail with UNABLE_TO_LOCK_ROW."""
        with self._lock:
            for record_id in record_ids:
                self._locks[record_id] = times

    def fail_next_requests(self, n: int, *, after: int = 0, drop_connection: bool = False) -> None:
        """After ``after`` more requests pass, fail the next n: HTTP 500, or close the socket."""
        with self._lock:
            self._fail_after, self._fail_left, self._fail_drop = after, n, drop_connection

    def expire_sessions(self) -> int:
        """Every issued session ends now (clients must re-authenticate)."""
        return self._registry.expire_all()

    def take_request_failure(self) -> str | None:
        """'500', 'drop' or None for the request now arriving."""
        with self._lock:
            if self._fail_left <= 0:
                return None
            if self._fail_after > 0:
                self._fail_after -= 1
                return None
            self._fail_left -= 1
            return "drop" if self._fail_drop else "500"

    def take_limit(self) -> str | None:
        """The REQUEST_LIMIT_EXCEEDED message for this request, or None."""
        with self._lock:
            if self._limit_left <= 0:
                return None
            self._limit_left -= 1
            if self._limit_daily:
                return "TotalRequests Limit exceeded."
            return "ConcurrentPerOrgLongTxn Limit exceeded."

    def take_lock(self, record_id: str) -> bool:
        with self._lock:
            left = self._locks.get(record_id, 0)
            if left <= 0:
                return False
            self._locks[record_id] = left - 1
            return True
