"""The write-back outbox as the use cases see it (pure types): a claimed row, whose dirty fields
are sent with the ledger's current values while its claim's lease is held."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed row: send the current values of ``dirty`` while holding ``token``."""

    id: int
    sobject: str
    record_id: str
    dirty: tuple[str, ...]
    generation: int
    token: str
    confirmed: dict[str, Any]
    dirtied_at: datetime | None = None  # since when its oldest unsent change has waited
