"""Owner changes from the org's field history (``LeadHistory``, ``Field = 'Owner'``).

They date each user's first hand-over of a re-read lead at its real time, not at the
record's ``LastModifiedDate`` (``record_events`` turns them into owner-only UPDATEs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.app.resync.errors import epoch_ms


@dataclass(frozen=True)
class OwnerChange:
    """One owner change of a lead, from its id-form LeadHistory row."""

    at_ms: int
    old_owner: str | None
    new_owner: str
    by: str


_OWNER_ID = re.compile(r"^(?:005|00G)[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")


def owner_changes_from_history(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[OwnerChange]]:
    """Lead id -> its owner changes, oldest first. Only rows whose ``NewValue`` is a user
    or queue id count: a real org writes a second row with the owners' names for a change
    involving a queue, which names nobody we could match."""
    changes: dict[str, list[OwnerChange]] = {}
    for row in rows:
        new, old = row.get("NewValue"), row.get("OldValue")
        lead_id = str(row.get("LeadId") or "")
        if not lead_id or not isinstance(new, str) or not _OWNER_ID.match(new):
            continue
        at_ms = epoch_ms(row.get("CreatedDate"), what=f"LeadHistory of {lead_id} CreatedDate")
        if at_ms is None:
            continue
        old_id = old if isinstance(old, str) and _OWNER_ID.match(old) else None
        by = str(row.get("CreatedById") or "")
        changes.setdefault(lead_id, []).append(OwnerChange(at_ms, old_id, new, by))
    for found in changes.values():
        found.sort(key=lambda c: c.at_ms)
    return changes
