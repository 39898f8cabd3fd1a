"""Lead routing by policy (pure): rule matching, pools, caps, availability, fallback.

``route`` is a pure function of the lead, the policy, the durable per-pool state and the
decision time: called twice with the same inputs it returns the same decision. Memoizing
decisions per lead (a lead already decided keeps its stored decision) is the processor's
job; it stores ``RoutingDecision.to_json()`` and the returned ``PoolState``.

Pools (``kpi_pipeline.core.workloads.pools``) hand out owners by smooth weighted round robin
with availability and daily caps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kpi_pipeline.core.events import ChangeEvent, format_sf_datetime, parse_sf_datetime
from kpi_pipeline.core.policy.conditions import explain, matches
from kpi_pipeline.core.policy.load import RoutingPolicy, Rule
from kpi_pipeline.core.workloads.pools import PoolState, pick_from_pool
from kpi_pipeline.core.workloads.records import (
    DELETED_KEY,
    RecordState,
    Version,
    event_version,
    merge_event,
)

USER_PREFIX = "005"
QUEUE_PREFIX = "00G"
FALLBACK_RULE_ID = "fallback"  # Routing_Rule__c when no rule matched


def is_user_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(USER_PREFIX)


# --- lead facts ------------------------------------------------------------------------


def known_created_at(lead: RecordState) -> datetime | None:
    """``CreatedDate``, else the commit time of the CREATE event; None while neither is known
    (an UPDATE delivered before its CREATE)."""
    created = parse_sf_datetime(lead.fields.get("CreatedDate"))
    if created is not None:
        return created
    if lead.created_ms is not None:
        return datetime.fromtimestamp(lead.created_ms / 1000.0, tz=UTC)
    return None


def lead_created_at(lead: RecordState) -> datetime:
    """``CreatedDate``, else the commit time of the CREATE event (CONTRACTS.md §4)."""
    created = known_created_at(lead)
    if created is not None:
        return created
    raise ValueError(
        f"lead {lead.record_id} has neither CreatedDate nor a CREATE event; "
        "re-sync it over REST so its creation time is known"
    )


def needs_routing(lead: RecordState, policy: RoutingPolicy) -> bool:
    """Unrouted: owned by a queue, by an integration user, or by nobody; and still a live lead."""
    if lead.deleted or lead.fields.get("IsConverted") in (True, "true"):
        return False
    owner = lead.fields.get("OwnerId")
    if not owner:
        return True
    return owner.startswith(QUEUE_PREFIX) or owner in policy.integration_users


def created_state(state: RecordState, create: ChangeEvent) -> RecordState:
    """The lead as its CREATE event made it (``state``: its merged state now)."""
    version = event_version(create)
    if "OwnerId" in create.fields and all(v <= version for v in state.versions.values()):
        return state  # nothing changed it since (the common case): no second merge
    basis = merge_event(None, create, state.record_id)
    if "OwnerId" not in create.fields:
        # A re-read record's CREATE: the owner at creation is unknown (re-sync never
        # guesses it), so the owner it has now decides.
        basis = replace(basis, fields={**basis.fields, "OwnerId": state.fields.get("OwnerId")})
    if known_created_at(basis) is None:
        basis = replace(basis, created_ms=state.created_ms)
    return basis


def arrival_state(state: RecordState, lead_events: Sequence[ChangeEvent]) -> RecordState:
    """The lead as it arrived when its CREATE is among ``lead_events`` (its events in this
    batch), else as it is now: what an unrouted lead's SLA rule is matched on, so an edit
    later in the same batch does not change it (it would not, in the next batch)."""
    creates = [e for e in lead_events if e.change_type == "CREATE"]
    return created_state(state, min(creates, key=event_version)) if creates else state


def _live_at(state: RecordState, version: Version) -> RecordState:
    """``state`` without a deletion or conversion committed after ``version``: neither had
    happened yet when a change at ``version`` was made (a deleted or converted lead cannot be
    edited). Other fields edited since keep their newer values: the state has no history."""
    deleted = state.deleted and state.versions.get(DELETED_KEY, version) <= version
    converted_later = state.versions.get("IsConverted", version) > version
    if deleted == state.deleted and not converted_later:
        return state
    fields = {**state.fields, "IsConverted": False} if converted_later else state.fields
    return replace(state, fields=fields, deleted=deleted)


def routing_basis(
    state: RecordState, lead_events: Sequence[ChangeEvent], policy: RoutingPolicy
) -> tuple[RecordState, datetime] | None:
    """The lead as it was when it became unrouted, and when that was; None when none of
    ``lead_events`` (its events in this batch) left it unrouted. ``state`` is its merged state.

    Judged at event time, never on the current merged state: a retried batch that runs
    after later owner changes were merged must route exactly the leads an in-order run
    routes, and its template is recommended on the same fields (a later edit of the lead in
    the same batch must not change either).

    A CREATE is judged on the fields it was created with. An owner change is judged on the
    owner it set, and an undelete on the merged state; both without a deletion or conversion
    that came later (``_live_at``). A field edited or an owner set later in the same batch
    is seen there, since the state keeps no history: a known difference from the same events
    in two batches. A person's later reassignment is honoured afterwards instead (the
    routing step supersedes the decision and writes no owner)."""
    for event in sorted(lead_events, key=event_version):
        if event.change_type == "CREATE":
            basis = created_state(state, event)
        elif event.change_type == "UNDELETE":
            basis = _live_at(state, event_version(event))
        elif event.change_type == "UPDATE" and "OwnerId" in event.fields:
            live = _live_at(state, event_version(event))
            basis = replace(live, fields={**live.fields, "OwnerId": event.fields["OwnerId"]})
        else:
            continue
        if needs_routing(basis, policy):
            at = datetime.fromtimestamp(event.header.commit_timestamp / 1000.0, tz=UTC)
            return basis, max(at, lead_created_at(state))
    return None


def owner_set_by_person(
    lead: RecordState, after_ms: int, *, integration_users: frozenset[str], client_id: str
) -> str | None:
    """The owner a person (or another tool) gave the lead after ``after_ms``, if any.

    "A person" is anyone but the integration users and our own write-back (its echo comes
    back with our client id in changeOrigin). Such a change is a deliberate reassignment:
    the pipeline never overwrites it, whatever order the events and our writes arrive in.
    """
    entry = lead.meta.get("owner_set")
    if not entry:
        return None
    version, user, origin = entry
    if version[0] <= after_ms or origin == client_id or user in integration_users:
        return None
    owner = lead.fields.get("OwnerId")
    return owner if isinstance(owner, str) and owner else None


def current_owner(
    lead: RecordState,
    decision: RoutingDecision | None,
    *,
    integration_users: frozenset[str],
    client_id: str,
) -> str | None:
    """The lead's owner as the ledger knows it: our routing decision, unless a person
    changed the owner after the lead became unrouted (then theirs). Judged by event time,
    not by when the decision was made, so a late (retried) decision loses to a
    reassignment that happened before it."""
    owner = lead.fields.get("OwnerId")
    if decision is None:
        return owner if isinstance(owner, str) else None
    person = owner_set_by_person(
        lead, decision.basis_ms, integration_users=integration_users, client_id=client_id
    )
    return person or decision.owner_id


# --- state and decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    lead_id: str
    owner_id: str
    rule_id: str
    pool_id: str | None
    policy_version: str
    sla_minutes: float
    decided_at: datetime
    explanation: dict[str, Any]
    # When the lead became unrouted (its creation, or the change that put it in a queue):
    # the event time routing judged it at. A person's owner change after it wins over this
    # decision. None when it equals decided_at (event clock), or for decisions stored
    # before it was kept: decided_at stands in.
    basis_at: datetime | None = None

    @property
    def basis_ms(self) -> int:
        return int((self.basis_at or self.decided_at).timestamp() * 1000)

    def to_json(self) -> dict[str, Any]:
        data = {
            "lead_id": self.lead_id,
            "owner_id": self.owner_id,
            "rule_id": self.rule_id,
            "pool_id": self.pool_id,
            "policy_version": self.policy_version,
            "sla_minutes": self.sla_minutes,
            "decided_at": format_sf_datetime(self.decided_at),
            "explanation": self.explanation,
        }
        if self.basis_at is not None and self.basis_at != self.decided_at:
            data["basis_at"] = format_sf_datetime(self.basis_at)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoutingDecision:
        decided_at = parse_sf_datetime(data.get("decided_at"))
        if decided_at is None:
            raise ValueError(
                f"stored routing decision for {data.get('lead_id')!r} has no decided_at"
            )
        return cls(
            lead_id=data["lead_id"],
            owner_id=data["owner_id"],
            rule_id=data["rule_id"],
            pool_id=data.get("pool_id"),
            policy_version=data["policy_version"],
            sla_minutes=float(data["sla_minutes"]),
            decided_at=decided_at,
            explanation=dict(data.get("explanation") or {}),
            basis_at=parse_sf_datetime(data.get("basis_at")),
        )


@dataclass(frozen=True, slots=True)
class RoutingOutcome:
    decision: RoutingDecision
    pool_state: PoolState | None  # new state of the pool used (None: no pool involved)


# --- conditions ------------------------------------------------------------------------


# --- pools -----------------------------------------------------------------------------


def local_day(at: datetime, policy: RoutingPolicy) -> str:
    return at.astimezone(policy.tz).date().isoformat()


# --- routing ---------------------------------------------------------------------------


def first_matching_rule(policy: RoutingPolicy, fields: Mapping[str, Any]) -> Rule | None:
    """The policy's first rule whose condition the fields meet (the rule that routes the lead,
    and whose SLA and calendar apply to it)."""
    return next((rule for rule in policy.rules if matches(rule.when, fields)), None)


def sla_minutes_for(policy: RoutingPolicy, fields: Mapping[str, Any]) -> float:
    """CONTRACTS.md §4: the first matching rule's SLA, else the policy default."""
    rule = first_matching_rule(policy, fields)
    if rule is not None and rule.sla_minutes is not None:
        return float(rule.sla_minutes)
    return float(policy.default_sla_minutes)


def _first_match(lead: RecordState, policy: RoutingPolicy) -> tuple[Rule | None, list[str]]:
    not_matched = []
    for rule in policy.rules:
        if matches(rule.when, lead.fields):
            return rule, not_matched
        not_matched.append(rule.id)
    return None, not_matched


def route(
    lead: RecordState,
    policy: RoutingPolicy,
    pools: Mapping[str, PoolState],
    *,
    decided_at: datetime,
    member_status: Mapping[str, bool] | None = None,
) -> RoutingOutcome:
    """Decide the owner of one lead: first matching rule wins; pools pick by their cycle.

    ``member_status`` maps user id -> available (False skips the member, e.g. out of
    office); it overrides nothing else. Unknown pool state starts at pointer 0.
    """
    if decided_at.tzinfo is None:
        raise ValueError("decided_at must be timezone-aware (UTC); naive datetimes are ambiguous")
    rule, not_matched = _first_match(lead, policy)
    explanation: dict[str, Any] = {"rules_not_matched": not_matched}
    if rule is None:
        explanation["fallback"] = "no rule matched"
        decision = _decision(
            lead,
            policy,
            policy.fallback_owner,
            FALLBACK_RULE_ID,
            None,
            None,
            decided_at,
            explanation,
        )
        return RoutingOutcome(decision, None)

    explanation["matched_rule"] = rule.id
    explanation["conditions"] = explain(rule.when, lead.fields)
    target = rule.target
    if target.kind != "pool":
        owner = target.user or target.queue or policy.fallback_owner
        explanation["target"] = {target.kind: owner}
        return RoutingOutcome(
            _decision(lead, policy, owner, rule.id, None, rule, decided_at, explanation), None
        )

    pool_id = target.pool or ""
    pool = policy.pools[pool_id]
    state = pools.get(pool_id) or PoolState(pool_id)
    day = local_day(decided_at, policy)
    owner, new_state, pool_explanation = pick_from_pool(
        pool_id, pool, state, day=day, member_status=member_status or {}
    )
    explanation["target"] = {"pool": pool_id}
    explanation["pool"] = {**pool_explanation, "day": day}
    if owner is None:
        owner = pool.fallback_owner or policy.fallback_owner
        explanation["fallback"] = f"no eligible member in pool {pool_id}"
    return RoutingOutcome(
        _decision(lead, policy, owner, rule.id, pool_id, rule, decided_at, explanation), new_state
    )


def _decision(
    lead: RecordState,
    policy: RoutingPolicy,
    owner: str,
    rule_id: str,
    pool_id: str | None,
    rule: Rule | None,
    decided_at: datetime,
    explanation: dict[str, Any],
) -> RoutingDecision:
    sla = (
        rule.sla_minutes
        if rule is not None and rule.sla_minutes is not None
        else policy.default_sla_minutes
    )
    return RoutingDecision(
        lead_id=lead.record_id,
        owner_id=owner,
        rule_id=rule_id,
        pool_id=pool_id,
        policy_version=policy.version,
        sla_minutes=float(sla),
        decided_at=decided_at,
        explanation=explanation,
    )


# --- fields written and KPIs -------------------------------------------------------------


def latency_minutes(created_at: datetime, assigned_at: datetime) -> float:
    return round((assigned_at - created_at).total_seconds() / 60.0, 2)


def assignment_fields(decision: RoutingDecision, *, created_at: datetime) -> dict[str, Any]:
    """Lead fields for a routing decision. A queue is not a user owner, so routing to a
    queue writes the owner and the rule but leaves the assignment time unset."""
    values: dict[str, Any] = {
        "OwnerId": decision.owner_id,
        "Routing_Policy_Version__c": decision.policy_version,
        "Routing_Rule__c": decision.rule_id,
    }
    if is_user_id(decision.owner_id):
        values["Owner_Assigned_At__c"] = format_sf_datetime(decision.decided_at)
        values["Assignment_Latency_Minutes__c"] = latency_minutes(created_at, decision.decided_at)
    return values


def assignment_from_owner_change(
    lead: RecordState, created_at: datetime, *, non_assignees: frozenset[str] = frozenset()
) -> tuple[datetime, float] | None:
    """When the lead first got a user owner without us: at creation, or by a later change.

    ``non_assignees`` are users whose ownership does not count as an assignment (the
    policy's integration users). Echoes of our own routing writes must not reach here:
    for routed leads the decision time is the assignment time.
    """
    seen: Mapping[str, int] = lead.meta.get("owner_first_seen") or {}
    times = [ms for owner, ms in seen.items() if is_user_id(owner) and owner not in non_assignees]
    if not times:
        return None
    first_ms = min(times)
    if lead.created_ms is not None and first_ms <= lead.created_ms:
        assigned_at = created_at  # created already owned by a user
    else:
        assigned_at = max(created_at, datetime.fromtimestamp(first_ms / 1000.0, tz=UTC))
    return assigned_at, latency_minutes(created_at, assigned_at)


def route_in_order(
    leads: list[RecordState], policy: RoutingPolicy, pools: Mapping[str, PoolState] | None = None
) -> tuple[list[RoutingDecision], dict[str, PoolState]]:
    """Route leads one after another in creation order at their creation time (event
    clock), carrying pool state: the what-if behind ``policy simulate`` and replays."""
    state = dict(pools or {})
    decisions = []
    for lead in sorted(leads, key=lambda lead: (lead_created_at(lead), lead.record_id)):
        outcome = route(lead, policy, state, decided_at=lead_created_at(lead))
        if outcome.pool_state is not None:
            state[outcome.pool_state.pool_id] = outcome.pool_state
        decisions.append(outcome.decision)
    return decisions, state
