"""``Stoppable``: a started sandbox server that a ``with`` block stops on leaving."""

from __future__ import annotations

from typing import Self


class Stoppable:
    """Base of the started servers (``RunningPubSubServer``, ``RunningRestServer``):
    ``with start_...() as server:`` stops the server when the block ends, however it ends."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
