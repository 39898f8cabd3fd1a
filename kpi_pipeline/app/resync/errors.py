"""The re-sync's error, and the one parse every re-read time goes through."""

from __future__ import annotations

from typing import Any

from kpi_pipeline.core.events import parse_sf_datetime, to_epoch_ms


class ResyncError(ValueError):
    """A window the re-sync cannot work on as recorded (the message says why and what to do)."""


def epoch_ms(value: Any, *, what: str) -> int | None:
    """A Salesforce time (or None) as epoch ms; a malformed one is a ``ResyncError`` naming
    ``what`` (the record and field), so the window's error says which row was bad."""
    try:
        parsed = parse_sf_datetime(value)
    except ValueError as exc:
        raise ResyncError(f"{what}: {exc}") from exc
    return None if parsed is None else to_epoch_ms(parsed)
