"""Between the stream receivers and the consumer (an adapter helper of ``stream``): the
``Inbox`` queue, what goes on it (a ``Queued`` batch or a receiver's ``Failure``), and each
open stream's flow control (``StreamSession``: the consumer's credit requests as many events
as it took off the queue, so queued plus requested events never exceed the window)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.subscribe_stream import SubscribeStream
from kpi_pipeline.core.raw import StreamBatch


@dataclass(frozen=True, slots=True)
class Failure:
    """A receiver's fatal error, handed to the consumer, which raises it."""

    channel: str
    error: BaseException


class StreamSession:
    """Flow control of one open stream; ``credit`` is called from the consumer thread."""

    def __init__(self, channel: str, stream: SubscribeStream, window: int, start: bytes | None):
        self.channel = channel
        self.previous = start  # latest replay id queued so far in this session
        self.outstanding = window
        self.credited_at = time.monotonic()
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    def credit(self, events: int) -> None:
        """The consumer took ``events`` off the queue: request as many again."""
        with self._lock:
            if self._closed or events <= 0:
                return  # a closed stream's credit does not carry over to its successor
            self.outstanding += events
            self.credited_at = time.monotonic()
            self._stream.send(pb2.FetchRequest(topic_name=self.channel, num_requested=events))

    def receive(self, timeout: float) -> pb2.FetchResponse | None:
        return self._stream.receive(timeout)

    def received(self, events: int) -> None:
        with self._lock:
            self.outstanding -= events

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stream.close()


@dataclass(frozen=True, slots=True)
class Queued:
    """A batch waiting for the consumer, with the session whose credit it returns."""

    batch: StreamBatch
    session: StreamSession


class Inbox:
    """The queue between the receivers and the consumer.

    Bounded by flow control: per channel, queued events plus requested ones never exceed
    the window, and keepalives queued back to back collapse into one entry.
    """

    def __init__(self) -> None:
        self._items: deque[Queued | Failure] = deque()
        self._cond = threading.Condition()

    def put(self, item: Queued | Failure) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def put_keepalive(self, item: Queued) -> bool:
        """Queue a keepalive, or fold it into the one at the tail; True if folded."""
        with self._cond:
            tail = self._items[-1] if self._items else None
            if (
                isinstance(tail, Queued)
                and tail.batch.is_keepalive
                and tail.batch.channel == item.batch.channel
            ):
                # Keep the tail's previous id: that is what the store holds before it.
                self._items[-1] = replace(
                    tail,
                    batch=replace(
                        tail.batch,
                        latest_replay_id=item.batch.latest_replay_id,
                        rpc_id=item.batch.rpc_id,
                    ),
                    session=item.session,
                )
                return True
            self._items.append(item)
            self._cond.notify()
            return False

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def get(self, timeout: float) -> Queued | Failure | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None
