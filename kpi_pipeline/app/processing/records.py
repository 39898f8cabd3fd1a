"""The first step: decode a staged batch and merge its events into record states; gap events
open re-sync windows instead."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import sqlalchemy as sa

from kpi_pipeline.app.processing.context import StepContext
from kpi_pipeline.core.errors import PayloadDecodeError, UnknownSchemaError
from kpi_pipeline.core.events import ChangeEvent, EventFormatError
from kpi_pipeline.core.ledger_rows import FailedEvent, LoadedBatch
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.core.workloads.outreach_templates import PROFILE_FIELDS
from kpi_pipeline.core.workloads.records import RecordState, merge_event
from kpi_pipeline.core.workloads.selection import (
    EMAIL,
    LEAD,
    TASK,
    created_or_none,
    is_wildcard,
)
from kpi_pipeline.telemetry import metrics

log = logging.getLogger("kpi_pipeline.app.processing")


class Decoder(Protocol):
    def decode(self, raw: Any, schema_json: str | None = None) -> ChangeEvent: ...


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    events: list[ChangeEvent]
    dead_lettered: int


class FieldReader(Protocol):
    """What re-reading a diffed field needs of ``kpi_pipeline.adapters.salesforce.rest.SalesforceRest``."""

    def get_record(
        self, sobject: str, record_id: str, fields: Sequence[str]
    ) -> dict[str, Any] | None: ...


# Fields the workloads read besides the routing policy's conditions (first touch, template
# attribution, outreach personalisation). A field among them that arrives in diffFields
# (a large text field: the event carries a diff, not the value) is re-read over REST.
WORKLOAD_FIELDS: Mapping[str, frozenset[str]] = {
    LEAD: frozenset(
        {"Name", "OwnerId", "IsConverted", "CreatedDate", "CreatedById", "Address.Country"}
        | set(PROFILE_FIELDS)
    ),
    TASK: frozenset({"Status", "IsClosed", "WhoId", "CompletedDateTime", "CreatedById"}),
    EMAIL: frozenset(
        {"Subject", "EmailTemplateId", "RelatedToId", "ActivityId", "Incoming", "Status"}
        | {"MessageDate"}
    ),
}


class RecordsStep:
    def __init__(
        self,
        ctx: StepContext,
        *,
        routing_inputs: Sequence[str],
        field_reader: FieldReader | None = None,
    ) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.field_reader = field_reader
        self.needed_fields: dict[str, frozenset[str]] = {
            **WORKLOAD_FIELDS,
            LEAD: WORKLOAD_FIELDS[LEAD] | set(routing_inputs),
        }

    def decode(self, batch: LoadedBatch, decoder: Decoder) -> DecodedBatch:
        """Decode a staged batch with the schemas staged with it (never fetched again: the
        ledger holds the writer schema of every staged event); an undecodable event is
        dead-lettered and the rest proceeds."""
        events: list[ChangeEvent] = []
        dead = 0
        for raw in batch.events:
            try:
                schema = batch.schemas.get(raw.schema_id)
                if schema is None:  # stage_batch refuses such batches; an edited ledger only
                    raise UnknownSchemaError(
                        f"schema id {raw.schema_id!r} was not staged with batch "
                        f"{batch.batch_id!r}; its events cannot be decoded from the ledger"
                    )
                events.append(decoder.decode(raw, schema))
            except (PayloadDecodeError, UnknownSchemaError, EventFormatError) as exc:
                dead += 1
                metrics.record_error("cdc_decode")
                self.ledger.dead_letter(
                    FailedEvent(
                        channel=raw.channel,
                        replay_id=raw.replay_id,
                        batch_id=batch.batch_id,
                        stage="decode",
                        reason=f"{type(exc).__name__}: {exc}",
                        payload=raw.payload,
                    )
                )
        return DecodedBatch(events, dead)

    def _with_diffed_values(self, event: ChangeEvent) -> ChangeEvent:
        """The event with the current values of its diffFields that a workload reads,
        re-read over REST (the event only says they changed). Without a field reader, or
        when the read fails or the record is gone, the event goes on without them and the
        ledger keeps the value it had."""
        wanted = self.needed_fields.get(event.entity, frozenset())
        diffed = [n for n in event.header.diff_fields if n in wanted]
        if not diffed or self.field_reader is None or len(event.record_ids) != 1:
            return event
        record_id = event.record_ids[0]
        rest_names = [n.partition(".")[2] or n for n in diffed]  # Address.Country -> Country
        try:
            row = self.field_reader.get_record(event.entity, record_id, rest_names)
        except Exception as exc:  # the org is unreachable: keep processing, value stays stale
            metrics.record_error("cdc_diff_reread")
            log.warning(
                "could not re-read diffed fields %s of %s %s over REST: %s",
                diffed, event.entity, record_id, exc,
            )  # fmt: skip
            return event
        if row is None:
            return event
        fields = dict(event.fields)
        for name, rest_name in zip(diffed, rest_names, strict=True):
            if rest_name not in row:
                continue
            parent, dot, child = name.partition(".")
            if dot:
                compound = fields.get(parent)
                fields[parent] = {
                    **(compound if isinstance(compound, dict) else {}),
                    child: row[rest_name],
                }
            else:
                fields[name] = row[rest_name]
        return replace(event, fields=fields)

    def apply_records(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Merge events into record states and refresh lead facts; gap events open re-sync
        windows instead, and an event the workload code cannot merge is dead-lettered."""
        gaps = [e for e in events if e.is_gap]
        changes = [self._with_diffed_values(e) for e in events if not e.is_gap]
        keys = {(e.entity, rid) for e in changes for rid in e.record_ids if not is_wildcard(rid)}
        failed: list[tuple[ChangeEvent, str]] = []
        with self.ledger.write() as conn:
            states = self.ledger.load_records_for_update(conn, keys)
            touched: dict[tuple[str, str], RecordState] = {}
            for event in changes:
                try:
                    merged = {
                        (event.entity, rid): merge_event(
                            states.get((event.entity, rid)), event, rid
                        )
                        for rid in event.record_ids
                        if not is_wildcard(rid)
                    }
                except Exception as exc:  # workload code failed on this event: park it, go on
                    failed.append((event, f"{type(exc).__name__}: {exc}"))
                    continue
                states.update(merged)
                touched.update(merged)
            self.ledger.save_records(conn, touched.values())
            leads = {rid: s for (sobject, rid), s in touched.items() if sobject == LEAD}
            self._refresh_lead_facts(conn, leads)
        # Committed: the workload steps of this process() call may take these states
        # instead of reading them back (None: known not to exist); see handover.py.
        self.ctx.handover.keep({key: states.get(key) for key in keys})
        for event, reason in failed:
            self.ctx.dead_letter(event, "apply_records", reason)
        windows = [self._record_gap(e) for e in gaps]
        return {
            "merged_events": len(changes) - len(failed),
            "records": len(touched),
            "dead_lettered": len(failed),
            "resync_windows": sorted(set(windows)),
        }

    def _refresh_lead_facts(self, conn: sa.Connection, leads: Mapping[str, RecordState]) -> None:
        decisions = self.ledger.routing_decisions(conn, leads)
        batch = self.ledger.batch_work(conn)
        batch.preload(leads)
        for lead_id in sorted(leads):
            state = leads[lead_id]
            batch.ensure_lead_facts(
                lead_id,
                created=created_or_none(state),
                owner_id=self.ctx.current_owner(state, decisions.get(lead_id)),
            )
        batch.flush()

    def _record_gap(self, event: ChangeEvent) -> int:
        metrics.record_error("cdc_gap")
        return self.ledger.record_resync_window(
            ResyncGap(
                channel=event.channel,
                reason="gap_overflow" if event.is_overflow else "gap",
                from_replay=event.replay_id,
                from_time_ms=event.header.commit_timestamp,
                to_time_ms=event.header.commit_timestamp,
                detail={
                    "entity": event.entity,
                    "change_type": event.change_type,
                    "record_ids": sorted(event.record_ids),
                },
            )
        )
