"""A change event as fetched, before decoding: what the sensor stages in the ledger inbox."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawEvent:
    channel: str
    replay_id: bytes  # opaque; 8-byte big-endian in practice
    schema_id: str
    payload: bytes  # schemaless Avro binary
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """One FetchResponse of one channel, as handed to the handler."""

    channel: str
    events: tuple[RawEvent, ...]  # empty for a keepalive
    latest_replay_id: bytes  # where the channel resumes once this batch is staged
    previous_replay_id: bytes | None  # the durable id before it (None: the stream used a preset)
    rpc_id: str

    @property
    def is_keepalive(self) -> bool:
        return not self.events
