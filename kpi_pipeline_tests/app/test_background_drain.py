"""The stream worker's write-back drain on its own thread (``app/background_drain.py``)."""

from __future__ import annotations

import threading

import pytest

from kpi_pipeline.app.background_drain import BackgroundDrain

WAIT_S = 10.0


class _Drain:
    """A drain that records the thread it ran on and can be held inside a drain."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.inside = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    def __call__(self) -> str:
        self.threads.append(threading.current_thread().name)
        self.inside.set()
        assert self.release.wait(WAIT_S), "the test never released the drain"
        if self.fail_with is not None:
            raise self.fail_with
        return f"drain {len(self.threads)}"


def test_a_request_returns_at_once_and_the_drain_runs_on_its_own_thread() -> None:
    drain, results = _Drain(), []
    drain.release.clear()
    with BackgroundDrain(drain, results.append) as background:
        background.request()  # returns while the drain is held: the caller goes on
        assert drain.inside.wait(WAIT_S)
        assert results == []
        drain.release.set()
    assert drain.threads[0] == "writeback-drain"
    assert drain.threads[-1] == threading.current_thread().name  # the last drain, at close
    assert results == [f"drain {n}" for n in range(1, len(drain.threads) + 1)]


def test_requests_made_while_a_drain_runs_fold_into_one_more_drain() -> None:
    drain, results = _Drain(), []
    drain.release.clear()
    background = BackgroundDrain(drain, results.append).__enter__()
    background.request()
    assert drain.inside.wait(WAIT_S)
    for _ in range(5):  # marked dirty by five passes while the first drain sends
        background.request()
    drain.inside.clear()
    drain.release.set()
    assert drain.inside.wait(WAIT_S)  # the one drain that follows
    background.close()
    # The first drain, one for the five requests, and the last one at close: never six.
    assert len(drain.threads) == 3
    assert drain.threads[:2] == ["writeback-drain"] * 2


def test_a_failed_drain_is_raised_on_the_workers_thread_and_not_retried_there() -> None:
    drain, results = _Drain(), []
    drain.fail_with = ConnectionError("ledger went away")
    background = BackgroundDrain(drain, results.append).__enter__()
    background.request()
    assert drain.inside.wait(WAIT_S)
    background._thread.join(WAIT_S)  # the thread stops after the failure
    with pytest.raises(ConnectionError, match="ledger went away"):
        background.request()
    drain.fail_with = None
    background.close()  # the error was raised once; the last drain still runs
    assert results == ["drain 2"]


def test_a_failure_not_yet_seen_is_raised_by_close() -> None:
    drain = _Drain()
    drain.fail_with = ValueError("bad payload")
    background = BackgroundDrain(drain, lambda _r: None).__enter__()
    background.request()
    background._thread.join(WAIT_S)
    with pytest.raises(ValueError, match="bad payload"):
        background.close()


def test_leaving_on_an_error_stops_the_thread_without_draining_again() -> None:
    drain = _Drain()
    with (
        pytest.raises(RuntimeError, match="lease lost"),
        BackgroundDrain(drain, lambda _r: None) as background,
    ):
        background.request()
        assert drain.inside.wait(WAIT_S)
        raise RuntimeError("lease lost")
    assert not background._thread.is_alive()
    assert drain.threads == ["writeback-drain"]
