"""One open Subscribe call of the Pub/Sub API (an adapter): FetchRequests go out through a
queue, responses come in through a reader thread, and ``receive`` waits for the next with a
timeout. Shared by the bounded drain (``fetch``) and the long-lived subscriber (``stream``),
with the flow-control window, the reconnect backoff and the events a response carries."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from kpi_pipeline.adapters.pubsub.errors import error_from_rpc
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.core.errors import PubSubError
from kpi_pipeline.core.raw import RawEvent

MAX_OUTSTANDING = 100  # the most events a subscriber may have requested and not received


class StreamClosed(Exception):
    """The server ended the stream without an error status (e.g. idle close)."""


class FetchRequests:
    """The request side of a Subscribe stream, fed from the draining thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[pb2.FetchRequest | None] = queue.SimpleQueue()

    def send(self, request: pb2.FetchRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb2.FetchRequest]:
        while (request := self._queue.get()) is not None:
            yield request


class SubscribeStream:
    """One open Subscribe call: FetchRequests go out, responses come in via a reader thread.

    Reading with a timeout (``receive``) is what lets callers run a stall watchdog and
    notice a stop request while the stream is quiet.
    """

    def __init__(
        self,
        requests: FetchRequests,
        call: grpc.Call,
        translate: Callable[[PubSubError], PubSubError] = lambda error: error,
    ) -> None:
        self._requests = requests
        self._call = call
        self._translate = translate
        self._responses: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        reader = threading.Thread(target=_pump, args=(call, self._responses), daemon=True)
        reader.start()

    def send(self, request: pb2.FetchRequest) -> None:
        self._requests.send(request)

    def receive(self, timeout: float) -> pb2.FetchResponse | None:
        """The next response; None after ``timeout`` s of silence.

        Raises the typed error the stream failed with, or ``StreamClosed`` at a clean end.
        """
        try:
            kind, item = self._responses.get(timeout=timeout)
        except queue.Empty:
            return None
        if kind == "error":
            raise self._translate(error_from_rpc(item))  # type: ignore[arg-type]
        if kind == "end":
            raise StreamClosed()
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._requests.close()
        self._call.cancel()


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff before the next reopening (the first retry waits ``initial_s``)."""
    return min(max_s, initial_s * (2 ** max(failures - 1, 0)))


def raw_events(channel: str, response: pb2.FetchResponse) -> tuple[RawEvent, ...]:
    """The events of a FetchResponse, replay ids kept as the opaque bytes they are."""
    return tuple(
        RawEvent(
            channel=channel,
            replay_id=consumer.replay_id,
            schema_id=consumer.event.schema_id,
            payload=consumer.event.payload,
            event_id=consumer.event.id,
        )
        for consumer in response.events
    )


def _pump(call: Iterator[pb2.FetchResponse], out: queue.SimpleQueue) -> None:
    """Move responses (and the stream's end or error) from gRPC onto a queue."""
    try:
        for response in call:
            out.put(("response", response))
        out.put(("end", None))
    except grpc.RpcError as exc:
        out.put(("error", exc))
