"""Waiting for a condition in tests that drive real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(predicate: Callable[[], T], timeout: float, interval: float) -> T | None:
    """The first truthy value ``predicate`` returns within ``timeout`` seconds (asked every
    ``interval`` seconds), else None: the caller says what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
