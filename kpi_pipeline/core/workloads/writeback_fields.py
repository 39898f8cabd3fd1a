"""What the write-back sends for a Lead, and the rules that keep the org from moving backwards (pure).

The outbox does not store values: it marks which fields of a record are *dirty*, and the
drain reads the ledger's current values when it sends. A re-send after an uncertain
outcome therefore sends today's truth, and an older change is superseded by a newer one.

Two rules on top of that:

* **Groups go together.** The first-response fields (time, user, source, minutes and
  business minutes) describe one response, and the
  assignment time and its latency one assignment: dirtying one dirties its group, so the
  org never shows a time from one response and a source from another.
* **Order rules.** ``First_Response_At__c`` and ``Owner_Assigned_At__c`` only ever move
  earlier. The outbox remembers the values Salesforce confirmed; a group whose value would
  sort after the confirmed one is not sent (the ledger moved backwards, which its own
  guards forbid, or a drainer lost its lease: either way the org keeps the earlier value).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime

FIRST_RESPONSE_GROUP = (
    "First_Response_At__c",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Time_to_First_Response__c",
    "Time_to_First_Response_Business_Minutes__c",
)
ASSIGNMENT_GROUP = ("Owner_Assigned_At__c", "Assignment_Latency_Minutes__c")
# Derived from creation time, SLA minutes and calendar only: no order rule, it may move
# either way when the policy's calendar changes (``policy recompute``).
SLA_FIELDS = ("SLA_Due_At__c",)
ROUTING_FIELDS = ("OwnerId", "Routing_Policy_Version__c", "Routing_Rule__c")
TEMPLATE_FIELDS = ("Template_Recommended__c", "Template_Applied__c")
GROUPS: tuple[tuple[str, ...], ...] = (FIRST_RESPONSE_GROUP, ASSIGNMENT_GROUP)
# The group's leading field carries the order rule: later values are never sent.
ORDERED_GROUPS = {group[0]: group for group in GROUPS}
LEAD_FIELDS = frozenset(
    (*FIRST_RESPONSE_GROUP, *ASSIGNMENT_GROUP, *SLA_FIELDS, *ROUTING_FIELDS, *TEMPLATE_FIELDS)
)
_DATETIME_FIELDS = frozenset({"First_Response_At__c", "Owner_Assigned_At__c", "SLA_Due_At__c"})


class UnknownWritebackField(ValueError):
    """A field the write-back has no ledger value for."""


def dirty_names(sobject: str, names: Iterable[str]) -> list[str]:
    """The sorted set of fields to mark dirty: ``names`` plus the rest of their groups.

    Raises ``UnknownWritebackField`` for an sObject or field the ledger holds no value of,
    naming it and the fields it does hold (nothing else could be sent later)."""
    wanted = set(names)
    if sobject != "Lead":
        raise UnknownWritebackField(
            f"write-back of {sobject} fields is not supported: the ledger holds values for "
            f"Lead fields only ({', '.join(sorted(LEAD_FIELDS))})"
        )
    unknown = wanted - LEAD_FIELDS
    if unknown:
        raise UnknownWritebackField(
            f"no ledger value for Lead field(s) {sorted(unknown)}; the write-back sends "
            f"{', '.join(sorted(LEAD_FIELDS))}"
        )
    for group in GROUPS:
        if wanted & set(group):
            wanted |= set(group)
    return sorted(wanted)


@dataclass(frozen=True, slots=True)
class PreparedUpdate:
    """The values to send for one record, and what the rules held back."""

    values: dict[str, Any]
    held_back: dict[str, str]  # field -> why it is not sent


def prepare(
    current: Mapping[str, Any], dirty: Iterable[str], confirmed: Mapping[str, Any]
) -> PreparedUpdate:
    """Values of the ``dirty`` fields from ``current`` (the ledger now), minus those equal to
    what Salesforce already confirmed, and minus ordered groups that would move later."""
    names = set(dirty)
    values = {name: _wire(name, current.get(name)) for name in sorted(names)}
    held: dict[str, str] = {}
    for lead_field, group in ORDERED_GROUPS.items():
        if lead_field in values and _sorts_after(values[lead_field], confirmed.get(lead_field)):
            reason = (
                f"{lead_field} {values[lead_field]} would move later than the confirmed "
                f"{confirmed.get(lead_field)}"
            )
            for name in group:
                values.pop(name, None)
                held[name] = reason
    for name in [n for n in values if n in confirmed and confirmed[n] == values[n]]:
        del values[name]  # already in the org: no update, no echo
    return PreparedUpdate(values, held)


def _wire(name: str, value: Any) -> Any:
    if name in _DATETIME_FIELDS and isinstance(value, datetime):
        return format_sf_datetime(value)
    return value


def _sorts_after(value: Any, confirmed: Any) -> bool:
    new, old = parse_sf_datetime(value), parse_sf_datetime(confirmed)
    if old is None:
        return False
    return new is None or new > old
