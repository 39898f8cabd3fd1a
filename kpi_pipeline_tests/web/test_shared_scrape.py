"""Concurrent /metrics requests share the scrape in flight; a later request scrapes anew."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kpi_pipeline.web.server import _SharedScrape


def test_requests_during_a_scrape_share_it_and_later_ones_scrape_again() -> None:
    shared = _SharedScrape()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> bytes:
        calls.append(1)
        started.set()
        release.wait(10)
        return f"scrape {len(calls)}".encode()

    arrived = [threading.Event() for _ in range(6)]

    def follower(index: int) -> bytes:
        arrived[index].set()
        return shared.get("text", slow)

    with ThreadPoolExecutor(max_workers=8) as pool:
        leader = pool.submit(shared.get, "text", slow)
        assert started.wait(10)
        followers = [pool.submit(follower, i) for i in range(6)]
        other_format = pool.submit(shared.get, "openmetrics", lambda: b"separate")
        assert other_format.result(10) == b"separate"  # another encoding is its own scrape
        assert all(event.wait(10) for event in arrived)
        time.sleep(0.2)  # from the event to waiting on the scrape is a few lines of Python
        release.set()
        results = {f.result(10) for f in [leader, *followers]}
    assert results == {b"scrape 1"} and len(calls) == 1

    assert shared.get("text", slow) == b"scrape 2"  # the earlier result is never reused


def test_a_failed_scrape_fails_its_sharers_and_the_next_request_tries_again() -> None:
    shared = _SharedScrape()

    def broken() -> bytes:
        raise OSError("metrics directory unreadable")

    with pytest.raises(OSError, match="unreadable"):
        shared.get("text", broken)
    assert shared.get("text", lambda: b"ok") == b"ok"
