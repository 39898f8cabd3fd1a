"""The batch processor: one batch of change events through the ledger and the workloads.

No Dagster here: the ops of ``process_cdc_batch`` and ``kpi-pipeline replay`` call the
same methods. Each method is idempotent (delivery is at-least-once) and returns a small
JSON-able summary.

Clock. ``clock=None`` is the *event clock*: a decision is timestamped from the events
that caused it (a lead is routed at its creation, or when it was moved to a queue; a
first response at its own time), which makes ``replay`` deterministic. The live job
passes the wall clock instead.

Order independence. Record states merge per field (last writer wins), leads of a batch
are routed in (creation time, id) order on the fields they were created with (event
clock), first responses, assignment times and applied templates only move earlier,
responses and emails that arrive before their lead wait for it, an email linked to its
lead only through its ``ActivityId`` Task is evaluated again when that Task arrives or
changes (the ledger keeps an email→activity index), and routing is memoized per lead;
so duplicated deliveries, channels drifting apart and shuffled batches leave the same
lead facts (tested on the shipped stream, and on sampled channel interleavings of a
small one). One order does matter: round-robin pools hand out owners in the order lead
creations reach the processor across batches.

Failures. An event that cannot be decoded or merged, or a lead whose workload code
raises, is dead-lettered with its reason (the lead's writes roll back to a savepoint) and
the rest of the batch proceeds; database errors fail the step so the run is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger.sql import dumps
from kpi_pipeline.adapters.ledger.state import DecisionRow
from kpi_pipeline.adapters.ledger.store import Ledger, LoadedBatch
from kpi_pipeline.app.writeback import OwnerRules, Superseded, owner_rules
from kpi_pipeline.core.errors import PayloadDecodeError, UnknownSchemaError
from kpi_pipeline.core.events import (
    ChangeEvent,
    EventFormatError,
    format_sf_datetime,
    replay_id_hex,
)
from kpi_pipeline.core.flywheel.records import compute_record_id
from kpi_pipeline.core.policy.load import Condition, RoutingPolicy, Rule
from kpi_pipeline.core.workloads.business_hours import (
    ALWAYS_OPEN,
    BusinessClock,
    lead_clocks,
    policy_clocks,
)
from kpi_pipeline.core.workloads.first_touch import (
    FirstResponse,
    email_candidate,
    first_response,
    first_response_to_json,
    task_candidate,
)
from kpi_pipeline.core.workloads.lead_route import (
    FALLBACK_RULE_ID,
    RoutingDecision,
    assignment_from_owner_change,
    current_owner,
    is_user_id,
    lead_created_at,
    matches,
    needs_routing,
    owner_set_by_person,
    route,
)
from kpi_pipeline.core.workloads.outreach_templates import (
    PROFILE_FIELDS,
    TemplateCatalog,
    TemplateSelection,
    TemplateSelector,
    applied_template,
    selection_messages,
)
from kpi_pipeline.core.workloads.records import RecordState, event_version, merge_event
from kpi_pipeline.core.workloads.writeback_fields import (
    ASSIGNMENT_GROUP,
    FIRST_RESPONSE_GROUP,
    ROUTING_FIELDS,
    SLA_FIELDS,
)
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

LEAD, TASK, EMAIL = "Lead", "Task", "EmailMessage"
WORKLOAD_ROUTE, WORKLOAD_FIRST_TOUCH, WORKLOAD_TEMPLATE = (
    "lead_route",
    "first_touch",
    "outreach_template",
)
FIRST_TOUCH_MODEL = "first-touch-rules-v1"  # CONTRACTS.md §4 as code; policy adds automation
MAX_REPLAY_IDS_IN_METADATA = 20  # flywheel metadata values are capped at 512 characters
_ROUTING_TRIGGERS = frozenset({"CREATE", "UNDELETE"})


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


def _is_wildcard(record_id: str) -> bool:
    return "*" in record_id  # field-type conversions name ids like 001*; no record to merge


def _policy_fields(condition: Condition | None, into: set[str]) -> set[str]:
    if condition is not None:
        if condition.field:
            into.add(condition.field)
        for child in condition.children:
            _policy_fields(child, into)
    return into


class BatchProcessor:
    def __init__(
        self,
        ledger: Ledger,
        policy: RoutingPolicy,
        *,
        selector: TemplateSelector,
        catalog: TemplateCatalog,
        client_id: str,
        clock: Callable[[], datetime] | None = None,
        integration_user_id: str | None = None,
        field_reader: FieldReader | None = None,
    ) -> None:
        """``field_reader``: the org's REST API, to re-read a field a workload needs when
        an event lists it in diffFields (no value delivered); None leaves such a field with
        the value the ledger already has (``replay`` works offline)."""
        self.ledger = ledger
        self.field_reader = field_reader
        self.policy = policy
        self.selector = selector
        self.catalog = catalog
        self.client_id = client_id
        self.clock = clock
        self.owner_rules: OwnerRules = owner_rules(policy, client_id, integration_user_id)
        self.clocks = policy_clocks(policy.calendars)
        fields: set[str] = {"OwnerId"}
        for rule in policy.rules:
            _policy_fields(rule.when, fields)
        self._routing_inputs = tuple(sorted(fields))
        self.needed_fields: dict[str, frozenset[str]] = {
            **WORKLOAD_FIELDS,
            LEAD: WORKLOAD_FIELDS[LEAD] | fields,
        }

    # --- selection ----------------------------------------------------------------------

    def is_echo(self, event: ChangeEvent) -> bool:
        """A change our own write-back made: it updates record state, never triggers work."""
        return event.origin_client() == self.client_id

    def select_routing(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """Lead creations (and undeletes) and Lead owner changes, not our own echoes."""
        return [
            e
            for e in events
            if e.entity == LEAD
            and not self.is_echo(e)
            and (
                e.change_type in _ROUTING_TRIGGERS
                or (e.change_type == "UPDATE" and "OwnerId" in e.fields)
            )
        ]

    def select_first_touch(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Task and EmailMessage changes, plus the leads created in the batch (responses that
        arrived before their lead are waiting for them)."""
        return {
            "events": [e for e in events if e.entity in (TASK, EMAIL) and not self.is_echo(e)],
            "created_lead_ids": sorted(
                {
                    rid
                    for e in events
                    if e.entity == LEAD and e.change_type == "CREATE"
                    for rid in e.record_ids
                }
            ),
        }

    def select_templates(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Leads that may just have been routed, and emails that may have used a template."""
        routing = self.select_routing(events)
        return {
            "lead_ids": sorted(
                {rid for e in routing for rid in e.record_ids if not _is_wildcard(rid)}
            ),
            "email_events": [e for e in events if e.entity == EMAIL and not self.is_echo(e)],
            "lead_events": routing,  # to dead-letter a lead whose recommendation fails
            # Emails linked to their lead only through these Tasks are checked again.
            "task_ids": sorted(
                {
                    rid
                    for e in events
                    if e.entity == TASK and not self.is_echo(e)
                    for rid in e.record_ids
                    if not _is_wildcard(rid)
                }
            ),
        }

    # --- decode and merge ---------------------------------------------------------------

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
                    channel=raw.channel,
                    replay_id=raw.replay_id,
                    batch_id=batch.batch_id,
                    stage="decode",
                    reason=f"{type(exc).__name__}: {exc}",
                    payload=raw.payload,
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
        keys = {(e.entity, rid) for e in changes for rid in e.record_ids if not _is_wildcard(rid)}
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
                        if not _is_wildcard(rid)
                    }
                except Exception as exc:  # workload code failed on this event: park it, go on
                    failed.append((event, f"{type(exc).__name__}: {exc}"))
                    continue
                states.update(merged)
                touched.update(merged)
            self.ledger.save_records(conn, touched.values())
            leads = {rid: s for (sobject, rid), s in touched.items() if sobject == LEAD}
            self._refresh_lead_facts(conn, leads)
        for event, reason in failed:
            self._dead_letter(event, "apply_records", reason)
        windows = [self._record_gap(e) for e in gaps]
        return {
            "merged_events": len(changes) - len(failed),
            "records": len(touched),
            "dead_lettered": len(failed),
            "resync_windows": sorted(set(windows)),
        }

    def _refresh_lead_facts(self, conn: sa.Connection, leads: Mapping[str, RecordState]) -> None:
        decisions = self.ledger.routing_decisions(conn, leads)
        for lead_id in sorted(leads):
            state = leads[lead_id]
            self.ledger.ensure_lead_facts(
                conn,
                lead_id,
                created=_created_or_none(state),
                owner_id=self._current_owner(state, decisions.get(lead_id)),
            )

    def _current_owner(self, state: RecordState, decision: RoutingDecision | None) -> str | None:
        return current_owner(
            state,
            decision,
            integration_users=self.owner_rules.integration_users,
            client_id=self.client_id,
        )

    def _person_owner(self, state: RecordState, decision: RoutingDecision) -> str | None:
        return owner_set_by_person(
            state,
            decision.basis_ms,
            integration_users=self.owner_rules.integration_users,
            client_id=self.client_id,
        )

    def _record_gap(self, event: ChangeEvent) -> int:
        metrics.record_error("cdc_gap")
        return self.ledger.record_resync_window(
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

    def _dead_letter(
        self, event: ChangeEvent, stage: str, reason: str, *, conn: sa.Connection | None = None
    ) -> None:
        metrics.record_error(f"processing_{stage}")
        log.warning(
            "dead-lettering %s event %s at %s: %s", event.entity, event.replay_int, stage, reason
        )
        self.ledger.dead_letter(
            channel=event.channel,
            replay_id=event.replay_id,
            batch_id=None,
            stage=stage,
            reason=reason,
            payload=None,
            conn=conn,
        )

    # --- routing ------------------------------------------------------------------------

    def route_leads(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Route unrouted leads (memoized per lead), record first user-owner times otherwise."""
        triggers = [e for e in events if e.entity == LEAD and not self.is_echo(e)]
        replays = _replays_by_record(triggers)
        summary = {
            "leads": len(replays),
            "routed": 0,
            "memoized": 0,
            "owned": 0,
            "unknown": 0,
            "dead_lettered": 0,
            "superseded": 0,
        }
        superseded: list[str] = []
        routed: list[str] = []
        with self.ledger.write() as conn:
            # Pools first: their lock orders concurrent runs, so the memo read below is current.
            pools = self.ledger.lock_pools(conn, self.policy.pools)
            memo = self.ledger.routing_decisions(conn, replays)
            states = self.ledger.records(conn, [(LEAD, lead_id) for lead_id in replays])
            summary["unknown"] = len(replays) - len(states)
            for lead_id, state in _by_creation(states):
                if _created_or_none(state) is None:
                    summary["unknown"] += 1  # seen only through updates: re-sync tells its creation
                    continue

                def work(lead_id: str = lead_id, state: RecordState = state) -> str:
                    decision = memo.get(lead_id)
                    outcome = "memoized" if decision is not None else "owned"
                    new = False
                    basis = self._routing_basis(state, events_of(triggers, lead_id))
                    if decision is None and basis is not None:
                        decision, new = self._route_one(conn, *basis, pools, replays[lead_id])
                        outcome = "routed" if new else "memoized"
                    if self._apply_assignment(conn, state, decision, new_decision=new):
                        superseded.append(lead_id)
                    return outcome

                outcome = self._isolated(conn, "route_leads", work, events_of(triggers, lead_id))
                summary[outcome] += 1
                if outcome == "routed":
                    routed.append(lead_id)
        summary["routed_lead_ids"] = sorted(routed)
        summary["superseded"] = len(superseded)
        return summary

    def _isolated(
        self, conn: sa.Connection, stage: str, work: Callable[[], str], events: list[ChangeEvent]
    ) -> str:
        """Run one lead's work in a savepoint. If the workload code fails on it, its writes
        are rolled back, the events behind it are dead-lettered and the batch goes on;
        database errors still fail the step (the run retries it)."""
        try:
            with conn.begin_nested():
                return work()
        except sa.exc.SQLAlchemyError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if not events:
                metrics.record_error(f"processing_{stage}")
                log.error("%s failed with no event to dead-letter: %s", stage, reason)
            for event in events:
                self._dead_letter(event, stage, reason, conn=conn)
            return "dead_lettered"

    def _route_one(
        self,
        conn: sa.Connection,
        state: RecordState,
        basis_at: datetime,
        pools: dict[str, Any],
        replay_ids: list[str],
    ) -> tuple[RoutingDecision, bool]:
        """Route one lead as it was at ``basis_at``; (decision, True), or (the stored
        decision, False) when another run decided it first (the pool locks make that rare;
        the memo insert makes it harmless)."""
        pools_before = {pool_id: pools[pool_id].to_json() for pool_id in sorted(pools)}
        decided_at = self.clock() if self.clock is not None else basis_at
        outcome = route(state, self.policy, pools, decided_at=decided_at)
        decision = replace(outcome.decision, basis_at=basis_at if basis_at != decided_at else None)
        if not self.ledger.insert_routing_decision(conn, decision):
            return self.ledger.routing_decisions(conn, [decision.lead_id])[decision.lead_id], False
        if outcome.pool_state is not None:
            self.ledger.save_pool_state(conn, outcome.pool_state)
        lead_input = {name: _field_value(state.fields, name) for name in self._routing_inputs}
        messages = [
            {
                "role": "system",
                "content": f"Route this inbound lead with routing policy {self.policy.version}: "
                "first matching rule wins, pools assign by weighted round robin.",
            },
            {
                "role": "user",
                "content": _canonical(
                    {"lead_id": decision.lead_id, "lead": lead_input, "pools": pools_before}
                ),
            },
        ]
        self._record_decision(
            conn,
            workload=WORKLOAD_ROUTE,
            lead_id=decision.lead_id,
            decided_at=decision.decided_at,
            rule_id=decision.rule_id,
            model=f"routing-policy:{self.policy.version}",
            messages=messages,
            response=decision.to_json(),
            replay_ids=replay_ids,
        )
        outcome_label = (
            "fallback"
            if decision.rule_id == FALLBACK_RULE_ID or "fallback" in decision.explanation
            else "routed"
        )
        metrics.record_decision(WORKLOAD_ROUTE, outcome_label, self.policy.version)
        if outcome.pool_state is not None:  # only once everything for this lead succeeded
            pools[outcome.pool_state.pool_id] = outcome.pool_state
        return decision, True

    def _routing_basis(
        self, state: RecordState, lead_events: Sequence[ChangeEvent]
    ) -> tuple[RecordState, datetime] | None:
        """The lead as it was when it became unrouted, and when that was; None when none of
        its events left it unrouted.

        Judged at event time, never on the current merged state: a retried batch that runs
        after later owner changes were merged must route exactly the leads an in-order
        run routes. A CREATE is judged on the fields it was created with, an owner change
        on the owner it set. A person's later reassignment is honoured afterwards instead
        (``_apply_assignment``: the decision is superseded and no owner is written)."""
        for event in sorted(lead_events, key=event_version):
            if event.change_type == "CREATE":
                basis = merge_event(None, event, state.record_id)
                if "OwnerId" not in event.fields:
                    # A re-read record's CREATE: the owner at creation is unknown (re-sync
                    # never guesses it), so the owner it has now decides.
                    basis = replace(
                        basis, fields={**basis.fields, "OwnerId": state.fields.get("OwnerId")}
                    )
            elif event.change_type == "UNDELETE":
                basis = state
            elif event.change_type == "UPDATE" and "OwnerId" in event.fields:
                basis = replace(state, fields={**state.fields, "OwnerId": event.fields["OwnerId"]})
            else:
                continue
            if _created_or_none(basis) is None:
                basis = replace(basis, created_ms=state.created_ms)
            if needs_routing(basis, self.policy):
                at = datetime.fromtimestamp(event.header.commit_timestamp / 1000.0, tz=UTC)
                return basis, max(at, lead_created_at(state))
        return None

    def _apply_assignment(
        self,
        conn: sa.Connection,
        state: RecordState,
        decision: RoutingDecision | None,
        *,
        new_decision: bool,
    ) -> bool:
        """Lead facts of a routed or owned lead, and the fields to write back. Returns True
        when a person took the lead after it became unrouted: the decision stands in the
        ledger (the lead was routed, its pool turn is used), but its owner is not written."""
        lead_id = state.record_id
        created = lead_created_at(state)
        person = self._person_owner(state, decision) if decision is not None else None
        self.ledger.ensure_lead_facts(
            conn, lead_id, created=created, owner_id=self._current_owner(state, decision)
        )
        dirty: set[str] = set()
        if decision is not None:
            calendar = self.policy.calendar_name(decision.rule_id)
            self.ledger.set_routing_facts(conn, decision, calendar=calendar)
            if new_decision:
                dirty |= set(ROUTING_FIELDS) - ({"OwnerId"} if person else set())
            # The decision counts as an assignment even when a person's change supersedes
            # its owner: the earlier of the two is the first user owner, whichever order
            # the events came in (event clock: the decision is at the lead's basis time,
            # before any later change).
            assigned_at = decision.decided_at
            if is_user_id(decision.owner_id) and self._set_assignment(
                conn, lead_id, created, assigned_at
            ):
                dirty |= set(ASSIGNMENT_GROUP)
            if person is not None and new_decision:
                taken_ms = state.meta["owner_set"][0][0]
                at = self.clock() if self.clock else datetime.fromtimestamp(taken_ms / 1e3, tz=UTC)
                item = Superseded(lead_id, decision.owner_id, person, "ledger")
                self._record_superseded(conn, item, at)
        else:
            rule = self._sla_rule(state)
            calendar = self.policy.calendar_name(rule.id if rule is not None else None)
            self.ledger.set_sla_if_unrouted(
                conn, lead_id, self.sla_minutes(state), calendar=calendar
            )
        dirty |= self._refresh_clocks(conn, lead_id)
        # The first user owner may come from a person (at creation or by a later change)
        # rather than from our decision; the earliest of them is the assignment.
        assigned = assignment_from_owner_change(
            state, created, non_assignees=self.owner_rules.integration_users
        )
        if assigned is not None and self._set_assignment(conn, lead_id, created, assigned[0]):
            dirty |= set(ASSIGNMENT_GROUP)
        if dirty:
            self.ledger.mark_dirty(conn, LEAD, lead_id, dirty)
        return person is not None

    def record_superseded(self, superseded: Sequence[Superseded]) -> None:
        """Decisions whose owner write the drain dropped because the org showed a person's
        owner (``kpi_pipeline.app.writeback.SupersedeRecorder``)."""
        with self.ledger.write() as conn:
            for item in superseded:
                self.ledger.ensure_lead_facts(
                    conn, item.lead_id, created=None, owner_id=item.actual_owner
                )
                self._record_superseded(conn, item, datetime.now(UTC))

    def _record_superseded(self, conn: sa.Connection, item: Superseded, at: datetime) -> None:
        messages = [
            {
                "role": "system",
                "content": "A person changed the lead's owner after it became unrouted: their "
                "owner stands and the routing decision's owner is not written.",
            },
            {
                "role": "user",
                "content": _canonical(
                    {
                        "lead_id": item.lead_id,
                        "decided_owner": item.decided_owner,
                        "actual_owner": item.actual_owner,
                        "seen_in": item.seen_in,
                    }
                ),
            },
        ]
        stored = self._record_decision(
            conn,
            workload=WORKLOAD_ROUTE,
            lead_id=item.lead_id,
            decided_at=at,
            rule_id="superseded",
            model=f"routing-policy:{self.policy.version}",
            messages=messages,
            response={"superseded": True, "owner_id": item.actual_owner},
            replay_ids=[],
        )
        if stored:  # counted once, like every decision, however often it is seen again
            metrics.record_decision(WORKLOAD_ROUTE, "superseded", self.policy.version)

    def _set_assignment(
        self, conn: sa.Connection, lead_id: str, created: datetime, assigned_at: datetime
    ) -> bool:
        latency = round((assigned_at - created).total_seconds() / 60.0, 2)
        changed = self.ledger.set_assignment(conn, lead_id, assigned_at, latency)
        if changed:
            metrics.observe_assignment(max(0.0, (assigned_at - created).total_seconds()))
        return changed

    def _sla_rule(self, state: RecordState) -> Rule | None:
        return next((r for r in self.policy.rules if matches(r.when, state.fields)), None)

    def sla_minutes(self, state: RecordState) -> float:
        """CONTRACTS.md §4: the first matching rule's SLA, else the policy default."""
        rule = self._sla_rule(state)
        if rule is not None and rule.sla_minutes is not None:
            return float(rule.sla_minutes)
        return float(self.policy.default_sla_minutes)

    def _clock(self, calendar: str | None) -> BusinessClock:
        return clock_named(self.clocks, self.policy, calendar)

    def _refresh_clocks(self, conn: sa.Connection, lead_id: str) -> set[str]:
        """The lead's SLA due time and business-minute TTFR, recomputed from its stored
        facts in its calendar. Called whenever the SLA or the first response may have
        changed, so the values do not depend on which of the two was processed first.
        Returns the write-back fields to mark dirty: the first-response group when the
        business minutes changed (they travel with the response), the due time when it did."""
        row = self.ledger.clock_inputs(conn, lead_id)
        if row is None or row.CreatedDate is None:
            return set()
        due, business = lead_clocks(
            self._clock(row.SLA_Calendar),
            created=row.CreatedDate,
            sla_minutes=row.SLA_Minutes,
            first_response_at=row.First_Response_At__c,
        )
        stored = row.Time_to_First_Response_Business_Minutes__c
        if (due, business) == (row.SLA_Due_At, stored):
            return set()
        self.ledger.set_clocks(conn, lead_id, due_at=due, business_minutes=business)
        dirty: set[str] = set()
        if business != stored:
            dirty |= set(FIRST_RESPONSE_GROUP)
        if due != row.SLA_Due_At:
            dirty |= set(SLA_FIELDS)
        return dirty

    # --- first touch --------------------------------------------------------------------

    def detect_first_touch(
        self, events: Sequence[ChangeEvent], created_lead_ids: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Store response candidates; settle each affected lead's first response (only earlier)."""
        activities = [e for e in events if e.entity in (TASK, EMAIL) and not self.is_echo(e)]
        replays = _replays_by_record(activities)
        changed = {
            (e.entity, rid) for e in activities for rid in e.record_ids if not _is_wildcard(rid)
        }
        summary = {"activities": len(changed), "candidates": 0, "improved": 0}
        summary |= {"waiting_for_lead": 0, "relinked_emails": 0}
        affected: set[str] = set(created_lead_ids)
        with self.ledger.write() as conn:
            relinked = self._emails_of_tasks(conn, changed, replays)
            summary["relinked_emails"] = len(relinked)
            keys = sorted(changed | relinked)
            states = self.ledger.records(conn, keys)
            task_lookup = self._task_lookup(conn, states.values())
            lead_replays: dict[str, list[str]] = {}
            for key in keys:
                state = states.get(key)
                if state is None:
                    continue
                candidate = (
                    task_candidate(state)
                    if state.sobject == TASK
                    else email_candidate(state, task_lookup)
                )
                if candidate is None:
                    self.ledger.drop_candidate(conn, state.record_id)
                    continue
                summary["candidates"] += 1
                self.ledger.put_candidate(conn, candidate)
                affected.add(candidate.lead_id)
                lead_replays.setdefault(candidate.lead_id, []).extend(replays.get(key[1], []))
            leads = self.ledger.records(conn, [(LEAD, lead_id) for lead_id in affected])
            stored = self.ledger.candidates_for(conn, affected)
            for lead_id in sorted(affected):
                outcome = self._settle_first_response(
                    conn,
                    leads.get((LEAD, lead_id)),
                    stored.get(lead_id, []),
                    lead_replays.get(lead_id, []),
                )
                summary[outcome] = summary.get(outcome, 0) + 1
        return summary

    def _emails_of_tasks(
        self,
        conn: sa.Connection,
        changed: set[tuple[str, str]],
        replays: dict[str, list[str]],
    ) -> set[tuple[str, str]]:
        """Stored emails whose ActivityId is one of the changed Tasks: an email linked to
        its lead only through its Task is re-evaluated when that Task arrives or changes,
        so its candidate and template do not depend on which came first. The Task's replay
        ids are credited to the email (they are what triggered the re-evaluation)."""
        task_ids = [rid for sobject, rid in changed if sobject == TASK]
        linked = self.ledger.emails_linked_to(conn, task_ids)
        for email_id, task_id in linked.items():
            replays.setdefault(email_id, []).extend(replays.get(task_id, []))
        return {(EMAIL, email_id) for email_id in linked} - changed

    def _task_lookup(
        self, conn: sa.Connection, states: Iterable[RecordState]
    ) -> Callable[[str], RecordState | None]:
        activity_ids = {
            s.fields["ActivityId"]
            for s in states
            if s.sobject == EMAIL and isinstance(s.fields.get("ActivityId"), str)
        }
        tasks = self.ledger.records(conn, [(TASK, task_id) for task_id in activity_ids])
        return lambda task_id: tasks.get((TASK, task_id))

    def _settle_first_response(
        self,
        conn: sa.Connection,
        lead: RecordState | None,
        candidates: list[Any],
        replay_ids: list[str],
    ) -> str:
        created = _created_or_none(lead) if lead is not None else None
        if lead is None or created is None:
            return "waiting_for_lead"
        lead_id = lead.record_id
        fr = first_response(
            candidates,
            lead_created=created,
            automation_users=frozenset(self.policy.automation_users),
        )
        if fr is None:
            return "unanswered"
        if not self.ledger.improve_first_response(conn, lead_id, fr):
            return "unchanged"
        # Business minutes of the new first response (and a due time not yet computed).
        dirty = self._refresh_clocks(conn, lead_id) | set(FIRST_RESPONSE_GROUP)
        self.ledger.mark_dirty(conn, LEAD, lead_id, dirty)
        self._record_first_touch(conn, lead_id, created, candidates, fr, replay_ids)
        metrics.observe_first_response(max(0.0, (fr.at - created).total_seconds()))
        return "improved"

    def _record_first_touch(
        self,
        conn: sa.Connection,
        lead_id: str,
        created: datetime,
        candidates: list[Any],
        fr: FirstResponse,
        replay_ids: list[str],
    ) -> None:
        shown = [
            {
                "record_id": c.record_id,
                "source": c.source,
                "at": _sf_time(c.at),
                "user_id": c.user_id,
            }
            for c in candidates
        ]
        messages = [
            {
                "role": "system",
                "content": "Find the lead's first qualifying response: the earliest completed Task or "
                "outbound EmailMessage by (time, EmailMessage before Task, record id), not by an "
                "automation user, not before the lead was created.",
            },
            {
                "role": "user",
                "content": _canonical(
                    {"lead_id": lead_id, "created": _sf_time(created), "candidates": shown}
                ),
            },
        ]
        self._record_decision(
            conn,
            workload=WORKLOAD_FIRST_TOUCH,
            lead_id=lead_id,
            decided_at=self.clock() if self.clock else fr.at,
            rule_id=fr.source,
            model=FIRST_TOUCH_MODEL,
            messages=messages,
            response=first_response_to_json(fr),
            replay_ids=replay_ids,
        )
        metrics.record_decision(WORKLOAD_FIRST_TOUCH, fr.source, self.policy.version)

    # --- templates ----------------------------------------------------------------------

    def recommend_templates(
        self,
        lead_ids: Iterable[str] = (),
        email_events: Sequence[ChangeEvent] = (),
        lead_events: Sequence[ChangeEvent] = (),
        task_ids: Iterable[str] = (),
        *,
        routing_summary: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Recommend a template once per routed lead; record the template each lead's first
        outbound email used (Template_Applied__c). ``task_ids``: Tasks that changed in the
        batch; the emails logged by them are checked again (their lead may be known now)."""
        wanted = set(lead_ids) | set((routing_summary or {}).get("routed_lead_ids", []))
        summary = {
            "recommended": 0,
            "memoized": 0,
            "no_template": 0,
            "not_routed": 0,
            "applied": 0,
            "dead_lettered": 0,
        }
        failed_leads: list[str] = []
        with self.ledger.write() as conn:
            decisions = self.ledger.routing_decisions(conn, wanted)
            known = self.ledger.template_recommendations(conn, wanted)
            states = self.ledger.records(conn, [(LEAD, lead_id) for lead_id in wanted])
            for lead_id in sorted(wanted):
                state, decision = states.get((LEAD, lead_id)), decisions.get(lead_id)
                if lead_id in known:
                    summary["memoized"] += 1
                elif state is None or decision is None:
                    summary["not_routed"] += 1
                else:
                    outcome = self._isolated(
                        conn,
                        "recommend_templates",
                        lambda state=state, decision=decision: self._recommend_one(
                            conn, state, decision
                        ),
                        events_of([*lead_events, *email_events], lead_id),
                    )
                    summary[outcome] += 1
                    if outcome == "dead_lettered":
                        failed_leads.append(lead_id)
            summary["applied"] = self._detect_applied(conn, email_events, wanted, task_ids)
        summary["failed_lead_ids"] = failed_leads
        return summary

    def _recommend_one(
        self, conn: sa.Connection, state: RecordState, decision: RoutingDecision
    ) -> str:
        selection: TemplateSelection = self.selector.select(state.fields, self.catalog)
        decided_at = self.clock() if self.clock else decision.decided_at
        messages = selection.messages or selection_messages(state.fields, self.catalog)
        response = {
            "template_id": selection.template_id,
            "reason": selection.reason,
            "candidates": list(selection.candidates),
            "fallback_reason": selection.fallback_reason,
        }
        self._record_decision(
            conn,
            workload=WORKLOAD_TEMPLATE,
            lead_id=state.record_id,
            decided_at=decided_at,
            rule_id=decision.rule_id,
            model=selection.model,
            messages=messages,
            response=response,
            replay_ids=[],
        )
        outcome = (
            "fallback"
            if selection.fallback_reason
            else ("recommended" if selection.template_id else "none")
        )
        metrics.record_decision(WORKLOAD_TEMPLATE, outcome, self.policy.version)
        if selection.template_id is None:
            return "no_template"
        self.ledger.insert_template_recommendation(
            conn,
            lead_id=state.record_id,
            template_id=selection.template_id,
            model=selection.model,
            decided_at=decided_at,
            detail=response,
        )
        self.ledger.set_template_recommended(conn, state.record_id, selection.template_id)
        self.ledger.mark_dirty(conn, LEAD, state.record_id, ["Template_Recommended__c"])
        return "recommended"

    def _detect_applied(
        self,
        conn: sa.Connection,
        email_events: Sequence[ChangeEvent],
        lead_ids: Iterable[str],
        task_ids: Iterable[str] = (),
    ) -> int:
        """Emails of this batch, the stored outbound emails of ``lead_ids`` (emails that
        arrived before their lead was known) and the stored emails whose ActivityId is one
        of ``task_ids`` (emails that arrived before their Task), so the answer does not
        depend on order."""
        waiting = {
            c.record_id
            for candidates in self.ledger.candidates_for(conn, lead_ids).values()
            for c in candidates
            if c.source == EMAIL
        }
        waiting |= set(self.ledger.emails_linked_to(conn, task_ids))
        ids = sorted(
            waiting
            | {
                rid
                for e in email_events
                if e.entity == EMAIL
                for rid in e.record_ids
                if not _is_wildcard(rid)
            }
        )
        states = self.ledger.records(conn, [(EMAIL, rid) for rid in ids])
        task_lookup = self._task_lookup(conn, states.values())
        applied = 0
        for key in sorted(states):
            email = states[key]
            candidate = email_candidate(email, task_lookup)
            if candidate is None:
                continue
            template_id = applied_template(email, self.catalog)
            before = self.ledger.lead_facts(conn, [candidate.lead_id]).get(candidate.lead_id)
            if before is None:
                continue  # the lead is not known yet: re-checked when its CREATE arrives
            if (
                self.ledger.set_template_applied(
                    conn, candidate.lead_id, template_id, at=candidate.at, record_id=email.record_id
                )
                and template_id != before.Template_Applied__c
            ):
                self.ledger.mark_dirty(conn, LEAD, candidate.lead_id, ["Template_Applied__c"])
                applied += 1
        return applied

    # --- all of it ----------------------------------------------------------------------

    def process(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Every step in order, as the job runs them (used by ``replay`` and tests)."""
        records = self.apply_records(events)
        routing = self.route_leads(self.select_routing(events))
        first_touch = self.detect_first_touch(**self.select_first_touch(events))
        templates = self.recommend_templates(
            routing_summary=routing, **self.select_templates(events)
        )
        return {
            "records": records,
            "routing": routing,
            "first_touch": first_touch,
            "templates": templates,
        }

    def _record_decision(
        self,
        conn: sa.Connection,
        *,
        workload: str,
        lead_id: str,
        decided_at: datetime,
        rule_id: str | None,
        model: str,
        messages: list[dict[str, Any]],
        response: dict[str, Any],
        replay_ids: list[str],
    ) -> bool:
        """Store a flywheel decision; False when this very decision was stored before."""
        decision_id = compute_record_id(
            workload_id=workload,
            client_id=self.client_id,
            lead_id=lead_id,
            model=model,
            messages=messages,
        )
        replays = sorted(set(replay_ids))
        metadata = {
            "lead_id": lead_id,
            "policy_version": self.policy.version,
            "rule": rule_id or "",
            "replay_ids": ",".join(replays[:MAX_REPLAY_IDS_IN_METADATA]),
            "decision_id": decision_id,
        }
        return self.ledger.insert_decision(
            conn,
            DecisionRow(
                id=decision_id,
                workload=workload,
                lead_id=lead_id,
                decided_at=decided_at,
                policy_version=self.policy.version,
                rule_id=rule_id,
                model=model,
                request={"messages": messages, "metadata": metadata},
                response=response,
                replay_ids=replays,
            ),
        )


# --- helpers ----------------------------------------------------------------------------


def clock_named(
    clocks: Mapping[str | None, BusinessClock], policy: RoutingPolicy, calendar: str | None
) -> BusinessClock:
    """A stored calendar name the policy no longer defines falls back to its default."""
    if calendar in clocks:
        return clocks[calendar]
    return clocks.get(policy.default_calendar, ALWAYS_OPEN)


# --- recomputing business-hours values after a calendar change ---------------------------


@dataclass(frozen=True, slots=True)
class RecomputeReport:
    """What ``recompute_clocks`` found: leads read, and leads whose values changed."""

    leads: int
    changed: int  # leads with any stored value changed (calendar, due time, business minutes)
    due_changed: int
    business_changed: int
    calendar_changed: int
    dry_run: bool

    def summary(self) -> dict[str, Any]:
        return {
            "leads": self.leads,
            "changed": self.changed,
            "due_changed": self.due_changed,
            "business_minutes_changed": self.business_changed,
            "calendar_changed": self.calendar_changed,
            "dry_run": self.dry_run,
        }


def recompute_clocks(
    ledger: Ledger, policy: RoutingPolicy, *, dry_run: bool = False, page: int = 1000
) -> RecomputeReport:
    """Recompute every lead's SLA calendar, due time and business-minute TTFR under
    ``policy`` (after a calendar change), store what changed and mark it for write-back.

    Only derived values move: creation time, SLA minutes and the first response stay as
    measured, so a first response never moves later. A routed lead's calendar is the one
    ``policy`` names for its rule (else the default), an unrouted lead's the one of the
    first rule it matches now, exactly as processing would choose them; a lead whose
    record state is unknown keeps its stored calendar. The values are the processor's
    (``lead_clocks``), so a second run finds nothing to change. One write transaction per
    ``page`` leads, in Id order; ``dry_run`` only counts."""
    clocks = policy_clocks(policy.calendars)
    counts = {"leads": 0, "changed": 0, "due": 0, "business": 0, "calendar": 0}
    after: str | None = None
    while True:
        with ledger.read() if dry_run else ledger.write() as conn:
            rows = ledger.clock_rows(conn, after_id=after, limit=page)
            if not rows:
                break
            unrouted = [(LEAD, row.Id) for row in rows if row.Routing_Rule__c is None]
            states = ledger.records(conn, unrouted) if unrouted else {}
            for row in rows:
                calendar = _recomputed_calendar(policy, row, states.get((LEAD, row.Id)))
                due, business = lead_clocks(
                    clock_named(clocks, policy, calendar),
                    created=row.CreatedDate,
                    sla_minutes=row.SLA_Minutes,
                    first_response_at=row.First_Response_At__c,
                )
                dirty: set[str] = set()
                if business != row.Time_to_First_Response_Business_Minutes__c:
                    dirty |= set(FIRST_RESPONSE_GROUP)  # the group travels together
                    counts["business"] += 1
                if due != row.SLA_Due_At:
                    dirty |= set(SLA_FIELDS)
                    counts["due"] += 1
                moved = calendar != row.SLA_Calendar
                counts["calendar"] += moved
                counts["leads"] += 1
                if not (dirty or moved):
                    continue
                counts["changed"] += 1
                if dry_run:
                    continue
                ledger.set_calendar_and_clocks(
                    conn, row.Id, calendar=calendar, due_at=due, business_minutes=business
                )
                if dirty:
                    ledger.mark_dirty(conn, LEAD, row.Id, dirty)
            after = rows[-1].Id
    return RecomputeReport(
        leads=counts["leads"],
        changed=counts["changed"],
        due_changed=counts["due"],
        business_changed=counts["business"],
        calendar_changed=counts["calendar"],
        dry_run=dry_run,
    )


def _recomputed_calendar(policy: RoutingPolicy, row: Any, state: RecordState | None) -> str | None:
    if row.Routing_Rule__c is not None:
        return policy.calendar_name(row.Routing_Rule__c)
    if state is None:
        return row.SLA_Calendar
    rule = next((r for r in policy.rules if matches(r.when, state.fields)), None)
    return policy.calendar_name(rule.id if rule is not None else None)


def events_of(events: Iterable[ChangeEvent], record_id: str) -> list[ChangeEvent]:
    """The events about one record, or (for a lead's emails) related to it."""
    return [
        e for e in events if record_id in e.record_ids or e.fields.get("RelatedToId") == record_id
    ]


def _field_value(fields: Mapping[str, Any], name: str) -> Any:
    """A field by name; ``Address.CountryCode`` reaches into a compound field."""
    if name in fields:
        return fields[name]
    parent, _, child = name.partition(".")
    value = fields.get(parent)
    return value.get(child) if child and isinstance(value, Mapping) else None


def _created_or_none(state: RecordState) -> datetime | None:
    try:
        return lead_created_at(state)
    except ValueError:
        return None  # seen only through updates; a re-sync will tell its creation time


def _by_creation(
    states: Mapping[tuple[str, str], RecordState],
) -> list[tuple[str, RecordState | None]]:
    """Leads in (creation time, id) order, so pool pointers advance the same way whatever
    order the events arrived in; leads of unknown creation last."""
    far = datetime.max.replace(tzinfo=UTC)
    known = [(key[1], s) for key, s in states.items()]
    return sorted(known, key=lambda item: (_created_or_none(item[1]) or far, item[0]))


def _replays_by_record(events: Iterable[ChangeEvent]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in events:
        for rid in event.record_ids:
            if not _is_wildcard(rid):
                found.setdefault(rid, []).append(replay_id_hex(event.replay_id))
    return found


def _sf_time(value: datetime | None) -> str | None:
    return format_sf_datetime(value) if value is not None else None


def _canonical(value: Any) -> str:
    return dumps(value)
