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
