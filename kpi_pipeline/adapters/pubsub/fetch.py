"""One bounded fetch of a channel (``PubSubClient.fetch``, an adapter): what it returns
(``FetchResult``), its state across stream reopenings (``Drain``), and one Subscribe stream
drained with flow control (at most 100 events outstanding, topped up at half the window)
until the fetch has enough events, its time is up or the channel is caught up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.subscribe_stream import (
    MAX_OUTSTANDING,
    SubscribeStream,
    raw_events,
)
from kpi_pipeline.core.errors import StreamStalledError
from kpi_pipeline.core.raw import RawEvent

Preset = Literal["EARLIEST", "LATEST", "CUSTOM"]


@dataclass
class FetchResult:
    events: list[RawEvent] = field(default_factory=list)
    # Where the next fetch should resume (CUSTOM): the last event's id, or a later keepalive id.
    latest_replay_id: bytes | None = None
    keepalives: int = 0
    reconnects: int = 0


@dataclass
class Drain:
    """State of one fetch across stream reopenings."""

    channel: str
    max_events: int
    deadline: float
    idle_return_s: float
    result: FetchResult
    preset: int
    replay_id: bytes
    done: bool = False

    @property
    def remaining(self) -> int:
        return self.max_events - len(self.result.events)

    def resume_point(self, replay_id: bytes) -> None:
        """Later reopenings start strictly after this id (CUSTOM)."""
        self.result.latest_replay_id = replay_id
        self.preset = pb2.ReplayPreset.CUSTOM
        self.replay_id = replay_id


def start_drain(
    channel: str,
    replay_id: bytes | None,
    preset: Preset,
    max_events: int,
    max_seconds: float,
    idle_return_s: float,
) -> Drain:
    """A fetch's starting state; the arguments are checked here, before anything is opened."""
    if preset not in ("EARLIEST", "LATEST", "CUSTOM"):
        raise ValueError(f"preset must be EARLIEST, LATEST or CUSTOM, got {preset!r}")
    if preset == "CUSTOM" and not replay_id:
        raise ValueError(
            "preset CUSTOM needs a replay_id (bytes); use EARLIEST or LATEST otherwise"
        )
    if replay_id is not None and not isinstance(replay_id, bytes):
        raise TypeError(f"replay_id must be bytes (opaque), got {type(replay_id).__name__}")
    if max_events < 1 or max_seconds <= 0 or idle_return_s <= 0:
        raise ValueError(
            f"max_events ({max_events}) must be >= 1, max_seconds ({max_seconds}) and "
            f"idle_return_s ({idle_return_s}) > 0"
        )
    return Drain(
        channel=channel,
        max_events=max_events,
        deadline=time.monotonic() + max_seconds,
        idle_return_s=idle_return_s,
        result=FetchResult(),
        # Enum numbers, never names: a name can silently encode as 0 (LATEST).
        preset=pb2.ReplayPreset.Value(preset),
        replay_id=replay_id if preset == "CUSTOM" and replay_id else b"",
    )


def drain_stream(
    drain: Drain,
    open_subscribe: Callable[[pb2.FetchRequest], SubscribeStream],
    stall_timeout_s: float,
) -> None:
    """One Subscribe stream; returns when the drain is done, raises when the stream fails."""
    outstanding = min(MAX_OUTSTANDING, drain.remaining)
    stream = open_subscribe(
        pb2.FetchRequest(
            topic_name=drain.channel,
            replay_preset=drain.preset,
            replay_id=drain.replay_id,
            num_requested=outstanding,
        )
    )
    try:
        while True:
            now = time.monotonic()
            if now >= drain.deadline:
                drain.done = True
                return
            wait = min(drain.deadline - now, drain.idle_return_s, stall_timeout_s)
            response = stream.receive(wait)
            if response is None:
                if time.monotonic() < drain.deadline and stall_timeout_s < drain.idle_return_s:
                    raise StreamStalledError(
                        f"no response on {drain.channel} for {stall_timeout_s:.1f} s "
                        "(not even a keepalive); the stream is presumed dead"
                    ) from None
                drain.done = True  # out of time, or quiet for idle_return_s: caught up
                return
            outstanding = _on_response(drain, response, outstanding, stream)
            if drain.done:
                return
    finally:
        stream.close()


def _on_response(
    drain: Drain, response: pb2.FetchResponse, outstanding: int, stream: SubscribeStream
) -> int:
    result = drain.result
    if not response.events:
        result.keepalives += 1
        if response.latest_replay_id:
            drain.resume_point(response.latest_replay_id)
        # An empty response means nothing is available now: the channel is caught up.
        drain.done = True
        return outstanding
    result.events.extend(raw_events(drain.channel, response))
    drain.resume_point(response.events[-1].replay_id)
    outstanding -= len(response.events)
    if drain.remaining <= 0:
        drain.done = True
        return outstanding
    # Top up early (at half the window) so the server never idles at pending=0.
    want = min(MAX_OUTSTANDING, drain.remaining) - outstanding
    if want > 0 and outstanding <= MAX_OUTSTANDING // 2:
        stream.send(pb2.FetchRequest(topic_name=drain.channel, num_requested=want))
        outstanding += want
    return outstanding
