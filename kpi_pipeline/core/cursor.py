"""The cdc_sensor cursor: per channel, the replay id up to which events are staged (pure).

Stored by Dagster as a JSON string. Replay ids are opaque bytes, so they are kept as
base64. Example::

    {"v": 1, "channels": {"/data/LeadChangeEvent": {"replay_id": "AAAAAAAAAHs=",
      "batch_id": "/data/LeadChangeEvent:...-...", "commit_ms": 1764000000000}}}

Reset one channel with ``dagster sensor cursor cdc_sensor --set '<json>'`` or all of them
with ``--delete`` (the channel then starts from ``KPI_CDC_INITIAL_PRESET``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from kpi_pipeline.core.events import replay_id_from_b64, replay_id_to_b64

CURSOR_VERSION = 1


class CursorError(ValueError):
    """The stored cursor cannot be read; the message says how to reset it."""


@dataclass(frozen=True, slots=True)
class ChannelCursor:
    replay_id: bytes | None = None  # last replay id staged *and* acknowledged
    batch_id: str | None = None  # the batch that ended at replay_id (None after a keepalive)
    commit_ms: int | None = (
        None  # commit time of the newest event seen, for lag and re-sync windows
    )

    def advanced(
        self, replay_id: bytes, *, batch_id: str | None, commit_ms: int | None
    ) -> ChannelCursor:
        return replace(
            self,
            replay_id=replay_id,
            batch_id=batch_id if batch_id is not None else self.batch_id,
            commit_ms=commit_ms if commit_ms is not None else self.commit_ms,
        )


@dataclass(frozen=True, slots=True)
class SensorCursor:
    channels: dict[str, ChannelCursor] = field(default_factory=dict)

    def for_channel(self, channel: str) -> ChannelCursor:
        return self.channels.get(channel, ChannelCursor())

    def with_channel(self, channel: str, value: ChannelCursor) -> SensorCursor:
        return SensorCursor({**self.channels, channel: value})

    def to_json(self) -> str:
        body = {
            channel: {
                "replay_id": replay_id_to_b64(c.replay_id) if c.replay_id is not None else None,
                "batch_id": c.batch_id,
                "commit_ms": c.commit_ms,
            }
            for channel, c in sorted(self.channels.items())
        }
        return json.dumps({"v": CURSOR_VERSION, "channels": body}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> SensorCursor:
        if not text:
            return cls()
        reset_hint = "reset it with `dagster sensor cursor cdc_sensor --delete` (channels restart from KPI_CDC_INITIAL_PRESET)"
        try:
            raw = json.loads(text)
            if raw.get("v") != CURSOR_VERSION:
                raise CursorError(
                    f"cdc_sensor cursor has version {raw.get('v')!r}, expected {CURSOR_VERSION}; {reset_hint}"
                )
            channels = {
                channel: ChannelCursor(
                    replay_id=replay_id_from_b64(entry["replay_id"])
                    if entry.get("replay_id")
                    else None,
                    batch_id=entry.get("batch_id"),
                    commit_ms=entry.get("commit_ms"),
                )
                for channel, entry in raw["channels"].items()
            }
        except CursorError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CursorError(
                f"cdc_sensor cursor {text[:200]!r} is not readable ({exc}); {reset_hint}"
            ) from exc
        return cls(channels)
