"""Routing: unrouted leads are routed once (memoized per lead) by the versioned policy, on the
fields they had when they became unrouted; assignment times and SLAs follow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kpi_pipeline.app.processing.batch_port import BatchWork
from kpi_pipeline.app.processing.context import StepContext
from kpi_pipeline.app.writeback import Superseded
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.policy.conditions import field_value
from kpi_pipeline.core.workloads.decision_messages import routing_messages, superseded_messages
from kpi_pipeline.core.workloads.lead_route import (
    FALLBACK_RULE_ID,
    RoutingDecision,
    arrival_state,
    assignment_from_owner_change,
    first_matching_rule,
    is_user_id,
    lead_created_at,
    owner_set_by_person,
    route,
    routing_basis,
    sla_minutes_for,
)
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import (
    LEAD,
    created_or_none,
    events_by_record,
    is_echo,
    replays_by_record,
)
from kpi_pipeline.core.workloads.writeback_fields import ASSIGNMENT_GROUP, ROUTING_FIELDS
from kpi_pipeline.telemetry import metrics

WORKLOAD_ROUTE = "lead_route"


class RoutingStep:
    def __init__(self, ctx: StepContext, *, routing_inputs: Sequence[str]) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.policy = ctx.policy
        self.clock = ctx.clock
        self._routing_inputs = tuple(routing_inputs)

    def _person_owner(self, state: RecordState, decision: RoutingDecision) -> str | None:
        return owner_set_by_person(
            state,
            decision.basis_ms,
            integration_users=self.ctx.owner_rules.integration_users,
            client_id=self.ctx.client_id,
        )

    def route_leads(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """Route unrouted leads (memoized per lead), record first user-owner times otherwise."""
        triggers = [e for e in events if e.entity == LEAD and not is_echo(e, self.ctx.client_id)]
        replays = replays_by_record(triggers)
        by_lead = events_by_record(triggers)
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
            states = self.ctx.records(conn, [(LEAD, lead_id) for lead_id in replays])
            batch = self.ledger.batch_work(conn)
            batch.preload(lead_id for (_, lead_id) in states)
            summary["unknown"] = len(replays) - len(states)
            known = {key: s for key, s in states.items() if created_or_none(s) is not None}
            summary["unknown"] += len(states) - len(known)  # re-sync tells their creation
            bases = self._bases(known, by_lead)
            for lead_id, state in in_pool_order(known, bases):

                def work(lead_id: str = lead_id, state: RecordState = state) -> str:
                    decision = memo.get(lead_id)
                    outcome = "memoized" if decision is not None else "owned"
                    new = False
                    if lead_id in bases:
                        basis = bases[lead_id]
                    else:  # it failed above: fail again here, where it is dead-lettered
                        basis = routing_basis(state, by_lead.get(lead_id, []), self.policy)
                    if decision is None and basis is not None:
                        decision, new = self._route_one(batch, *basis, pools, replays[lead_id])
                        outcome = "routed" if new else "memoized"
                    if self._apply_assignment(
                        batch, state, decision, new_decision=new, events=by_lead.get(lead_id, [])
                    ):
                        superseded.append(lead_id)
                    return outcome

                outcome = self.ctx.isolated(batch, "route_leads", work, by_lead.get(lead_id, []))
                summary[outcome] += 1
                if outcome == "routed":
                    routed.append(lead_id)
            batch.flush()
        summary["routed_lead_ids"] = sorted(routed)
        summary["superseded"] = len(superseded)
        return summary

    def _bases(
        self,
        states: Mapping[tuple[str, str], RecordState],
        by_lead: Mapping[str, list[ChangeEvent]],
    ) -> dict[str, tuple[RecordState, datetime] | None]:
        """Each lead's routing basis (None: nothing left it unrouted); a lead whose basis
        fails is left out here and fails again inside its isolated work, where it is
        dead-lettered alone."""
        bases: dict[str, tuple[RecordState, datetime] | None] = {}
        for (_, lead_id), state in states.items():
            try:
                bases[lead_id] = routing_basis(state, by_lead.get(lead_id, []), self.policy)
            except Exception:  # reported by the lead's own isolated work
                continue
        return bases

    def _route_one(
        self,
        batch: BatchWork,
        state: RecordState,
        basis_at: datetime,
        pools: dict[str, Any],
        replay_ids: list[str],
    ) -> tuple[RoutingDecision, bool]:
        """Route one lead as it was at ``basis_at``; (decision, True), or (the stored
        decision, False) when this batch decided it already. Another run cannot have
        decided it meanwhile: the memo was read under the pool locks."""
        pools_before = {pool_id: pools[pool_id].to_json() for pool_id in sorted(pools)}
        decided_at = self.clock() if self.clock is not None else basis_at
        outcome = route(state, self.policy, pools, decided_at=decided_at)
        decision = replace(outcome.decision, basis_at=basis_at if basis_at != decided_at else None)
        if not batch.insert_routing_decision(decision):
            return decision, False
        if outcome.pool_state is not None:
            batch.save_pool_state(outcome.pool_state)
        lead_input = {name: field_value(state.fields, name) for name in self._routing_inputs}
        messages = routing_messages(self.policy.version, decision.lead_id, lead_input, pools_before)
        self.ctx.record_decision(
            batch,
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

    def _apply_assignment(
        self,
        batch: BatchWork,
        state: RecordState,
        decision: RoutingDecision | None,
        *,
        new_decision: bool,
        events: Sequence[ChangeEvent],
    ) -> bool:
        """Lead facts of a routed or owned lead, and the fields to write back. Returns True
        when a person took the lead after it became unrouted: the decision stands in the
        ledger (the lead was routed, its pool turn is used), but its owner is not written.
        ``events``: the lead's events in this batch; an owned lead's SLA rule is matched,
        once, on the fields it arrived with (``arrival_state``)."""
        lead_id = state.record_id
        created = lead_created_at(state)
        person = self._person_owner(state, decision) if decision is not None else None
        batch.ensure_lead_facts(
            lead_id, created=created, owner_id=self.ctx.current_owner(state, decision)
        )
        dirty: set[str] = set()
        if decision is not None:
            calendar = self.policy.calendar_name(decision.rule_id)
            batch.set_routing_facts(decision, calendar=calendar)
            if new_decision:
                dirty |= set(ROUTING_FIELDS) - ({"OwnerId"} if person else set())
            # The decision counts as an assignment even when a person's change supersedes
            # its owner: the earlier of the two is the first user owner, whichever order
            # the events came in (event clock: the decision is at the lead's basis time,
            # before any later change).
            assigned_at = decision.decided_at
            if is_user_id(decision.owner_id) and self._set_assignment(
                batch, lead_id, created, assigned_at
            ):
                dirty |= set(ASSIGNMENT_GROUP)
            if person is not None and new_decision:
                taken_ms = state.meta["owner_set"][0][0]
                at = self.clock() if self.clock else datetime.fromtimestamp(taken_ms / 1e3, tz=UTC)
                item = Superseded(lead_id, decision.owner_id, person, "ledger")
                self._record_superseded(batch, item, at)
        else:
            arrived = arrival_state(state, events)
            rule = first_matching_rule(self.policy, arrived.fields)
            calendar = self.policy.calendar_name(rule.id if rule is not None else None)
            batch.set_sla_if_unrouted(
                lead_id, sla_minutes_for(self.policy, arrived.fields), calendar=calendar
            )
        dirty |= self.ctx.refresh_clocks(batch, lead_id)
        # The first user owner may come from a person (at creation or by a later change)
        # rather than from our decision; the earliest of them is the assignment.
        assigned = assignment_from_owner_change(
            state, created, non_assignees=self.ctx.owner_rules.integration_users
        )
        if assigned is not None and self._set_assignment(batch, lead_id, created, assigned[0]):
            dirty |= set(ASSIGNMENT_GROUP)
        if dirty:
            batch.mark_dirty(LEAD, lead_id, dirty)
        return person is not None

    def record_superseded(self, superseded: Sequence[Superseded]) -> None:
        """Decisions whose owner write the drain dropped because the org showed a person's
        owner (``kpi_pipeline.app.writeback.SupersedeRecorder``)."""
        with self.ledger.write() as conn:
            batch = self.ledger.batch_work(conn)
            batch.preload(item.lead_id for item in superseded)
            for item in superseded:
                batch.ensure_lead_facts(item.lead_id, created=None, owner_id=item.actual_owner)
                self._record_superseded(batch, item, datetime.now(UTC))
            batch.flush()

    def _record_superseded(self, batch: BatchWork, item: Superseded, at: datetime) -> None:
        messages = superseded_messages(
            item.lead_id, item.decided_owner, item.actual_owner, item.seen_in
        )
        self.ctx.record_decision(
            batch,
            workload=WORKLOAD_ROUTE,
            lead_id=item.lead_id,
            decided_at=at,
            rule_id="superseded",
            model=f"routing-policy:{self.policy.version}",
            messages=messages,
            response={"superseded": True, "owner_id": item.actual_owner},
            replay_ids=[],
            # counted once, like every decision, however often it is seen again
            on_stored=lambda: metrics.record_decision(
                WORKLOAD_ROUTE, "superseded", self.policy.version
            ),
        )

    def _set_assignment(
        self, batch: BatchWork, lead_id: str, created: datetime, assigned_at: datetime
    ) -> bool:
        latency = round((assigned_at - created).total_seconds() / 60.0, 2)
        changed = batch.set_assignment(lead_id, assigned_at, latency)
        if changed:
            metrics.observe_assignment(max(0.0, (assigned_at - created).total_seconds()))
        return changed


def in_pool_order(
    states: Mapping[tuple[str, str], RecordState],
    bases: Mapping[str, tuple[RecordState, datetime] | None],
) -> list[tuple[str, RecordState]]:
    """Leads in the order they take their pool turns: by when each became unrouted (its
    basis time), else when it was created, then by id. A lead that returns to a queue takes
    its turn after one created before that, as it does when the two come in separate batches."""

    def turn(item: tuple[str, RecordState]) -> tuple[datetime, str]:
        lead_id, state = item
        basis = bases.get(lead_id)
        return (basis[1] if basis is not None else lead_created_at(state), lead_id)

    return sorted(((key[1], s) for key, s in states.items()), key=turn)
