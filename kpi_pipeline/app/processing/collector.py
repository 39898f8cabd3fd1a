"""CPython's cyclic garbage collector, paused while a batch is processed.

Processing a batch allocates many small containers (decoded record states, their version
tuples, events, decisions) and makes almost no reference cycles, so reference counting frees
nearly all of it. The cyclic collector still runs every few hundred allocations, and each of
its full collections walks every tracked object of the process: in a re-sync of 101,173
records its 168 full collections took 19 of 81 seconds, and in a 100,000-event replay it
cost a quarter of the time (bench/RESULTS.md, Re-sync and Replay).

Paused for the batch and resumed after it, the collector runs between batches instead, a
few times rather than thousands, and still frees whatever cycles a batch left.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """The cyclic collector paused for the block (reference counting still frees everything
    that is not in a cycle), then resumed if it ran before. Nested or concurrent blocks
    leave it running at the end if it ran when the first began."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
