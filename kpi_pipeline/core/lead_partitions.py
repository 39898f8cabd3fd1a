"""Lead partitions (pure): which of N partitions an event's records belong to.

Sensor mode can process the pending batches as N ``process_cdc_batch`` runs, one per
partition (``KPI_CDC_LEAD_PARTITIONS``). Every run loads the same batches and keeps the
events of its own partition, so a lead, and every activity on it, is only ever processed by
one run at a time. The rule, per record id of an event:

* a Lead: the hash of its own id;
* a Task: its lead's partition, the lead being ``WhoId`` when that is a lead id (00Q...);
* an EmailMessage: its lead's partition, the lead being ``RelatedToId`` when that is a lead
  id, else the ``WhoId`` of the Task its ``ActivityId`` names (how first touch and the
  templates find an email's lead: ``core.workloads.first_touch.email_lead_id``);
* an activity whose lead is unknown, and any other object: the hash of its own id;
* a gap event (``GAP_*``) and an event without record ids: partition 0 (one re-sync window).

An activity's link fields are read, in order, from the *last* event of the loaded batches
that carries the field (``None`` included: a nulled link), then from the record state the
ledger stored (``stored``), read once per round by its first run and kept for the others
(``adapters.ledger.partitions.round_links``). Every partition run of a round loads the same
batches and resolves with the same stored copy, so every run computes the same partition for
every record, whatever another writer (a re-sync) changes meanwhile: each record is merged by
exactly one run per round. And a link field no event of the round touches is not written by
any run of the round, so the copy is also what the round leaves stored. (Link fields are ids, which CDC always delivers by value, never
only as a ``diffFields`` name to be re-read over REST.)

First touch stays correct across partitions because a response candidate needs its lead:
an activity is processed in its lead's partition whenever its lead can be known, and an
activity whose lead is unknown yields no candidate (it is stored and waits). When its link
arrives later (a Task's WhoId, the Task an email names), that event is processed in the
lead's partition, which re-reads the stored activity (``_emails_of_tasks``) and settles the
lead there. Rounds are sequential (the sensor requests the next round only when no run of
the previous one is in progress), so the stored state a round reads was complete.

The hash is BLAKE2b of the id's first 15 characters (the 18-character id adds only a
case-checksum to them), so a 15- and an 18-character id of one record agree, and the
result never depends on the process (Python's ``hash()`` is salted per process).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.first_touch import is_lead_id

LEAD, TASK, EMAIL = "Lead", "Task", "EmailMessage"
ACTIVITIES = (TASK, EMAIL)
# The fields that tie an activity to its lead.
LINK_FIELDS = {TASK: ("WhoId",), EMAIL: ("RelatedToId", "ActivityId")}
MAX_PARTITIONS = 256

RecordKey = tuple[str, str]
Links = Mapping[RecordKey, Mapping[str, Any]]


def check_partition(partition: int, partitions: int) -> None:
    """Raise ValueError unless ``0 <= partition < partitions <= MAX_PARTITIONS``."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"lead partitions must be 1..{MAX_PARTITIONS}, got {partitions}")
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not one of 0..{partitions - 1}")


def partition_of_id(record_id: str, partitions: int) -> int:
    """The partition of a record id: stable across processes, hosts and Python versions."""
    check_partition(0, partitions)
    if partitions == 1:
        return 0
    digest = hashlib.blake2b(record_id[:15].encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def batch_links(events: Iterable[ChangeEvent]) -> dict[RecordKey, dict[str, Any]]:
    """Each activity's link fields as the last event of the batches carrying them set them."""
    found: dict[RecordKey, dict[str, Any]] = {}
    for event in events:
        fields = LINK_FIELDS.get(event.entity)
        if fields is None or event.is_gap:
            continue
        carried = {name: event.fields[name] for name in fields if name in event.fields}
        if carried:
            for rid in event.record_ids:
                found.setdefault((event.entity, rid), {}).update(carried)
    return found


def activity_keys(events: Iterable[ChangeEvent]) -> set[RecordKey]:
    """The activity records of the events: whose stored link fields a round may need."""
    return {
        (e.entity, rid)
        for e in events
        if e.entity in ACTIVITIES and not e.is_gap
        for rid in e.record_ids
    }


def named_tasks(emails: Iterable[Mapping[str, Any]]) -> set[RecordKey]:
    """The Tasks that these emails' link fields name as their ActivityId."""
    return {
        (TASK, fields["ActivityId"])
        for fields in emails
        if isinstance(fields.get("ActivityId"), str) and fields["ActivityId"]
    }


@dataclasses.dataclass(frozen=True)
class LeadResolver:
    """An activity's lead from the round's events (``batch``) over the stored states."""

    batch: Links
    stored: Links

    @classmethod
    def of(cls, events: Sequence[ChangeEvent], stored: Links) -> LeadResolver:
        return cls(batch_links(events), stored)

    def field(self, key: RecordKey, name: str) -> Any:
        fields = self.batch.get(key, {})
        if name in fields:
            return fields[name]
        return self.stored.get(key, {}).get(name)

    def lead_of(self, sobject: str, record_id: str) -> str | None:
        """The lead id of a Task or EmailMessage, or None when it is unknown."""
        key = (sobject, record_id)
        if sobject == TASK:
            who = self.field(key, "WhoId")
            return who if is_lead_id(who) else None
        if sobject == EMAIL:
            related = self.field(key, "RelatedToId")
            if is_lead_id(related):
                return related
            activity = self.field(key, "ActivityId")
            if isinstance(activity, str) and activity:
                return self.lead_of(TASK, activity)
        return None


def record_partition(
    sobject: str, record_id: str, partitions: int, resolver: LeadResolver | None
) -> int:
    """The partition of one record (see the module docstring for the rule)."""
    if sobject in ACTIVITIES and resolver is not None:
        lead = resolver.lead_of(sobject, record_id)
        if lead is not None:
            return partition_of_id(lead, partitions)
    return partition_of_id(record_id, partitions)


def event_partitions(
    event: ChangeEvent, partitions: int, resolver: LeadResolver | None
) -> dict[int, tuple[str, ...]]:
    """{partition: the event's record ids in it}: an event naming several records (one
    change applied to many) is split between their partitions."""
    if event.is_gap or not event.record_ids or partitions == 1:
        return {0: event.record_ids}
    found: dict[int, list[str]] = {}
    for rid in event.record_ids:
        found.setdefault(record_partition(event.entity, rid, partitions, resolver), []).append(rid)
    return {p: tuple(ids) for p, ids in found.items()}


def events_of_partition(
    events: Sequence[ChangeEvent], partition: int, partitions: int, resolver: LeadResolver
) -> list[ChangeEvent]:
    """The events of one partition, in delivery order, each narrowed to its record ids there."""
    check_partition(partition, partitions)
    if partitions == 1:
        return list(events)
    kept: list[ChangeEvent] = []
    for event in events:
        ids = event_partitions(event, partitions, resolver).get(partition)
        if ids is None:
            continue
        if ids != event.record_ids:
            header = dataclasses.replace(event.header, record_ids=ids)
            event = dataclasses.replace(event, header=header)
        kept.append(event)
    return kept
