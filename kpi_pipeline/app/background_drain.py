"""The stream worker's write-back drain, on a thread of its own.

In stream mode one thread stages, processes and writes back in turn, so while the outbox
is sent to the org (REST round trips, then the ledger's confirmations) nothing is staged
or processed. A catch-up into PostgreSQL spent about a fifth of that thread's time there
(bench/RESULTS.md, Catch-up). ``BackgroundDrain`` runs the drain beside the processing
instead: ``request()`` after each processed pass wakes the thread, and requests that come
while a drain runs are folded into one more drain after it.

What makes that safe is the outbox's own design, the same one that lets ``writeback_drain``
runs drain beside batch runs in sensor mode: a drain claims rows under a token
(``SKIP LOCKED`` on PostgreSQL), and a row marked dirty while it is being sent keeps its
claim but moves its generation, so its confirmation leaves it pending for the next drain.
The ledger's transactions and the record hand-over are per thread.

A failed drain is not lost in the thread: its error is raised on the worker's thread at the
next ``request()`` or at ``close()``, so the generation fails as it did when the drain ran
inline (its rows stay claimed until their lease runs out, then the next drain sends them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class BackgroundDrain:
    def __init__(self, drain: Callable[[], Any], on_result: Callable[[Any], None]) -> None:
        self._drain = drain
        self._on_result = on_result
        self._wanted = threading.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="writeback-drain", daemon=True)

    def __enter__(self) -> BackgroundDrain:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(raise_error=exc[0] is None)

    def request(self) -> None:
        """Drain soon (after the drain in progress, if any); raises a previous drain's error."""
        self._raise_failure()
        self._wanted.set()

    def close(self, *, raise_error: bool = True) -> None:
        """Finish the drain in progress and stop the thread; then drain once more here, so
        what the last processed pass marked is sent before the generation ends."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        if raise_error:
            self._raise_failure()
            self._on_result(self._drain())

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                self._on_result(self._drain())
            except BaseException as exc:  # raised on the worker's thread (``request``)
                log.error("write-back drain failed: %s", exc)
                self._error = exc
                return

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
