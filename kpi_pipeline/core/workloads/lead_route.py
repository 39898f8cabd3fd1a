"""Lead routing by policy (pure): rule matching, pools, caps, availability, fallback.

``route`` is a pure function of the lead, the policy, the durable per-pool state and the
decision time: called twice with the same inputs it returns the same decision. Memoizing
decisions per lead (a lead already decided keeps its stored decision) is the processor's
job; it stores ``RoutingDecision.to_json()`` and the returned ``PoolState``.

Pools use one algorithm for both strategies: the pool's members are laid out in a fixed
*cycle* by smooth weighted round robin (nginx's interleaving: with weights 2:1:1 the
cycle is A B C A, not A A B C); ``round_robin`` is the same with all weights 1. The pool
pointer is the position in that cycle. Members that are unavailable or at their daily
cap are skipped by moving to the next slot, which removes their slots from the cycle and
keeps the remaining members' shares proportional to their weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from kpi_pipeline.core.events import EventFormatError, format_sf_datetime, parse_sf_datetime
from kpi_pipeline.core.policy.load import Condition, Pool, RoutingPolicy, Rule, integer_weights
from kpi_pipeline.core.workloads.records import RecordState

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
class PoolState:
    pool_id: str
    pointer: int = 0
    day: str = ""
    assigned_today: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "pointer": self.pointer,
            "day": self.day,
            "assigned_today": dict(self.assigned_today),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PoolState:
        return cls(
            pool_id=data["pool_id"],
            pointer=int(data.get("pointer", 0)),
            day=data.get("day", ""),
            assigned_today={k: int(v) for k, v in (data.get("assigned_today") or {}).items()},
        )


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


def _same(actual: Any, expected: Any) -> bool:
    """Equality as an admin means it: strings case-insensitively, '42' == 42, 'true' == True."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return str(actual).lower() == str(expected).lower()
    if isinstance(expected, int | float) or isinstance(actual, int | float):
        number = _as_number(actual), _as_number(expected)
        return None not in number and number[0] == number[1]
    return str(actual).casefold() == str(expected).casefold()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _as_date(value: Any) -> datetime | None:
    try:
        return parse_sf_datetime(value)
    except EventFormatError:
        return None


def _in_range(actual: Any, bounds: Mapping[str, Any]) -> bool:
    if actual is None or actual == "":
        return False
    dated = any(isinstance(b, str) for b in bounds.values())
    convert = _as_date if dated else _as_number
    value = convert(actual)
    if value is None:
        return False
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and value < convert(low):
        return False
    return not (high is not None and value > convert(high))


def field_value(fields: Mapping[str, Any], path: str) -> Any:
    """A field's value; ``Address.Country`` reads a child of a compound field."""
    if path in fields or "." not in path:
        return fields.get(path)
    parent, _, child = path.partition(".")
    compound = fields.get(parent)
    return compound.get(child) if isinstance(compound, Mapping) else None


def _leaf(condition: Condition, fields: Mapping[str, Any]) -> bool:
    actual = field_value(fields, condition.field or "")
    op, expected = condition.op, condition.value
    if op == "equals":
        return _same(actual, expected)
    if op == "in":
        return any(_same(actual, option) for option in expected)
    if op == "range":
        return _in_range(actual, expected)
    if op == "exists":
        return (actual is not None and actual != "") == bool(expected)
    return isinstance(actual, str) and actual.casefold().startswith(str(expected).casefold())


def matches(condition: Condition | None, fields: Mapping[str, Any]) -> bool:
    """Whether a lead's fields satisfy a rule's ``when`` (None matches everything)."""
    if condition is None:
        return True
    if condition.op == "any":
        return any(matches(child, fields) for child in condition.children)
    if condition.op == "all":
        return all(matches(child, fields) for child in condition.children)
    if condition.op == "not":
        return not matches(condition.children[0], fields)
    return _leaf(condition, fields)


def explain(condition: Condition | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluated condition tree, each node with its result (for the decision record)."""
    if condition is None:
        return {"op": "always", "result": True}
    if condition.op in ("any", "all", "not"):
        children = [explain(child, fields) for child in condition.children]
        return {"op": condition.op, "result": matches(condition, fields), "children": children}
    return {
        "field": condition.field,
        "op": condition.op,
        "expected": condition.value,
        "actual": field_value(fields, condition.field or ""),
        "result": _leaf(condition, fields),
    }


# --- pools -----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def pool_cycle(members: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Smooth weighted round-robin order of one full cycle; members as (user_id, weight text).

    Each step every member gains its weight and the richest one (first on ties) is picked
    and pays the total: over a cycle each member gets exactly its weight in slots, spread
    out as evenly as possible.
    """
    weights = integer_weights([float(weight) for _, weight in members])
    total = sum(weights)
    credit = [0] * len(weights)
    order = []
    for _ in range(total):
        credit = [c + w for c, w in zip(credit, weights, strict=True)]
        best = max(range(len(credit)), key=lambda i: (credit[i], -i))
        credit[best] -= total
        order.append(members[best][0])
    return tuple(order)


def _cycle_for(pool: Pool) -> tuple[str, ...]:
    weighted = pool.strategy == "weighted_round_robin"
    key = tuple((m.user_id, str(m.weight) if weighted else "1") for m in pool.members)
    return pool_cycle(key)


def local_day(at: datetime, policy: RoutingPolicy) -> str:
    return at.astimezone(policy.tz).date().isoformat()


def _skip_reason(
    member_id: str, pool: Pool, counts: Mapping[str, int], member_status: Mapping[str, bool]
) -> str | None:
    member = next(m for m in pool.members if m.user_id == member_id)
    if not member.available:
        return "unavailable (policy)"
    if member_status.get(member_id) is False:
        return "unavailable (status)"
    if member.daily_cap is not None and counts.get(member_id, 0) >= member.daily_cap:
        return f"daily cap reached ({counts.get(member_id, 0)}/{member.daily_cap})"
    return None


def pick_from_pool(
    pool_id: str,
    pool: Pool,
    state: PoolState,
    *,
    day: str,
    member_status: Mapping[str, bool],
) -> tuple[str | None, PoolState, dict[str, Any]]:
    """Next eligible member from the pointer on; (None, unchanged pointer) if nobody is eligible."""
    cycle = _cycle_for(pool)
    # Caps count per local day: a decision on another day (normally the next one) starts
    # from zero. The pointer survives policy edits; it is read modulo the new cycle.
    counts = dict(state.assigned_today) if state.day == day else {}
    start = state.pointer % len(cycle)
    skipped: list[dict[str, Any]] = []
    reported: set[str] = set()
    for offset in range(len(cycle)):
        slot = (start + offset) % len(cycle)
        member_id = cycle[slot]
        reason = _skip_reason(member_id, pool, counts, member_status)
        if reason is None:
            counts[member_id] = counts.get(member_id, 0) + 1
            new_state = PoolState(pool_id, (slot + 1) % len(cycle), day, counts)
            return member_id, new_state, _pool_explanation(pool, start, new_state.pointer, skipped)
        if member_id not in reported:
            reported.add(member_id)
            skipped.append({"user_id": member_id, "reason": reason})
    unchanged = PoolState(pool_id, start, day, counts)
    return None, unchanged, _pool_explanation(pool, start, start, skipped)


def _pool_explanation(
    pool: Pool, before: int, after: int, skipped: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "strategy": pool.strategy,
        "pointer_before": before,
        "pointer_after": after,
        "skipped": skipped,
    }


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
