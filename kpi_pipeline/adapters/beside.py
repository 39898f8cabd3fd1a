"""``run_beside``: one piece of work in a forked child process while this process does
another, so a bounded command can use a second core (``kpi-pipeline replay`` writes two of
its flywheel files there while it writes the rest).

The child is a ``multiprocessing`` process started by ``fork``: it inherits the parent's
memory as it is (the work is a closure, nothing is pickled) and must only compute and write
files of its own, never touch a database connection or a lock the parent holds. Where
``fork`` does not exist, both pieces run here, one after the other.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TypeVar

T = TypeVar("T")
_MAX_MESSAGE_CHARS = 2000  # well under a pipe's buffer, so the child never blocks on it


class BesideError(RuntimeError):
    """The work in the child process failed; the message carries the child's error."""


def run_beside(background: Callable[[], None], foreground: Callable[[], T]) -> T:
    """Run ``background`` in a forked child while ``foreground`` runs here; return
    ``foreground``'s result once both have finished. A failure of either raises here: the
    child's as ``BesideError`` with its exception's type and message."""
    if "fork" not in multiprocessing.get_all_start_methods():
        background()
        return foreground()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_report_failure, args=(background, send), name="kpi-beside", daemon=True
    )
    child.start()
    send.close()
    try:
        result = foreground()
    finally:
        child.join()
        failure = _failure(receive)
    if child.exitcode != 0:
        raise BesideError(
            f"the work run beside this process failed: {failure or f'exit code {child.exitcode}'}"
        )
    return result


def _failure(receive: Connection) -> str | None:
    """What the child reported, or None: it sends only when its work failed, and a closed
    pipe reads as ready."""
    try:
        return receive.recv() if receive.poll() else None
    except EOFError:
        return None
    finally:
        receive.close()


def _report_failure(work: Callable[[], None], send: Connection) -> None:
    try:
        work()
    except BaseException as exc:  # reported to the parent, which raises it as BesideError
        send.send(f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE_CHARS])
        raise SystemExit(1) from None
    finally:
        send.close()
