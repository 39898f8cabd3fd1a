from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from kpi_pipeline.core.kpis.per_lead import sla_flags
from kpi_pipeline.core.policy.load import RoutingPolicy, load_policy
from kpi_pipeline.core.workloads.lead_route import (
    FALLBACK_RULE_ID,
    RoutingDecision,
    assignment_fields,
    assignment_from_owner_change,
    lead_created_at,
    needs_routing,
    route,
    route_in_order,
)
from kpi_pipeline.core.workloads.pools import PoolState, pool_cycle
from kpi_pipeline.core.workloads.records import RecordState, fold_events
from kpi_pipeline_tests.support import events as ev

NOON = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 12:00 in America/New_York
A, B, C, D = (f"00500000000002{i}AAA" for i in range(4))
MANAGER = "005000000000009AAA"


def policy_with(
    pools: dict[str, Any], rules: list[dict[str, Any]] | None = None, **extra: Any
) -> RoutingPolicy:
    raw = {
        "version": "test-1",
        "timezone": "America/New_York",
        "default_sla_minutes": 60,
        "fallback_owner": MANAGER,
        "integration_users": [ev.INTEGRATION],
        "pools": pools,
        "rules": rules or [{"id": "everyone", "target": {"pool": "p"}}],
        **extra,
    }
    return load_policy(raw)


def lead(number: int = 1, **fields: Any) -> RecordState:
    return RecordState(
        "Lead", f"00Q{number:015d}", dict(fields), created_ms=int(NOON.timestamp() * 1000)
    )


def run(
    policy: RoutingPolicy,
    count: int,
    *,
    start: datetime = NOON,
    step=timedelta(seconds=1),
    **kw: Any,
):
    pools: dict[str, PoolState] = {}
    decisions = []
    for i in range(count):
        outcome = route(lead(i), policy, pools, decided_at=start + i * step, **kw)
        if outcome.pool_state is not None:
            pools[outcome.pool_state.pool_id] = outcome.pool_state
        decisions.append(outcome.decision)
    return decisions, pools


# --- rules -----------------------------------------------------------------------------


def address(code: str) -> dict[str, str]:
    return {"City": "X", "CountryCode": code}


def test_first_matching_rule_wins_with_nested_conditions():
    policy = load_policy()
    big_us = lead(1, LeadSource="Web", NumberOfEmployees=5000, Address=address("US"))
    rich_phone = lead(2, LeadSource="Phone Inquiry", AnnualRevenue=2e8, Address=address("CA"))
    big_de = lead(3, LeadSource="Web", NumberOfEmployees=5000, Address=address("DE"))
    partner = lead(4, LeadSource="partner referral", NumberOfEmployees=5000, Address=address("US"))
    japan = lead(5, LeadSource="Webinar", Address=address("JP"))
    web_us = lead(6, LeadSource="Web", Email="a@b.example", Address=address("US"))
    web_no_email = lead(7, LeadSource="Web", Address=address("US"))
    unknown = lead(8)

    subjects = (big_us, rich_phone, big_de, partner, japan, web_us, web_no_email, unknown)
    decisions = [route(subject, policy, {}, decided_at=NOON).decision for subject in subjects]
    assert [d.rule_id for d in decisions] == [
        "na-enterprise",
        "na-enterprise",  # the nested all(revenue, source) branch
        "emea",  # size alone does not make a German lead NA enterprise
        "partner-referrals",  # case-insensitive, and first in order
        "apac",
        "na-high-intent",
        "na-default",  # not(Email exists false) fails without an email
        "na-default",
    ]
    assert decisions[0].owner_id == "0055g0000000003AAA"
    assert decisions[3].owner_id == "00G5g0000000002EAA"
    assert [d.sla_minutes for d in decisions] == [30, 30, 60, 240, 120, 15, 60, 60]


def test_explanation_names_conditions_rules_skipped_and_pointer():
    policy = load_policy()
    subject = lead(1, LeadSource="Web", NumberOfEmployees=50, Address=address("DE"))
    explanation = route(subject, policy, {}, decided_at=NOON).decision.explanation
    assert explanation["rules_not_matched"] == ["partner-referrals", "na-enterprise"]
    assert explanation["matched_rule"] == "emea"
    assert explanation["conditions"] == {
        "field": "Address.CountryCode",
        "op": "in",
        "expected": ["GB", "DE", "FR", "NL", "ES", "SE"],
        "actual": "DE",
        "result": True,
    }
    assert explanation["pool"]["pointer_before"] == 0
    assert explanation["pool"]["pointer_after"] == 1
    json.dumps(explanation)  # goes into the flywheel record as is


@pytest.mark.parametrize(
    ("condition", "fields", "expected"),
    [
        ({"field": "Rating", "equals": "Hot"}, {"Rating": "hot"}, True),
        ({"field": "NumberOfEmployees", "equals": 50}, {"NumberOfEmployees": "50"}, True),
        ({"field": "HasOptedOutOfEmail", "equals": True}, {"HasOptedOutOfEmail": False}, False),
        ({"field": "Rating", "in": ["Hot", "Warm"]}, {"Rating": "Cold"}, False),
        ({"field": "AnnualRevenue", "range": {"min": 10, "max": 20}}, {"AnnualRevenue": 20}, True),
        ({"field": "AnnualRevenue", "range": {"min": 10, "max": 20}}, {"AnnualRevenue": 21}, False),
        ({"field": "AnnualRevenue", "range": {"min": 10}}, {}, False),
        (
            {"field": "CreatedDate", "range": {"min": "2026-11-01", "max": "2026-12-01"}},
            {"CreatedDate": "2026-11-24T10:00:00Z"},
            True,
        ),
        (
            {"field": "CreatedDate", "range": {"min": "2026-11-01"}},
            {"CreatedDate": 1_700_000_000_000},
            False,
        ),
        ({"field": "Email", "exists": True}, {"Email": ""}, False),
        ({"field": "Email", "exists": False}, {}, True),
        ({"field": "Company", "prefix": "ac"}, {"Company": "Acme"}, True),
        ({"any": [{"field": "A", "equals": 1}, {"field": "B", "equals": 2}]}, {"B": 2}, True),
        ({"all": [{"field": "A", "equals": 1}, {"field": "B", "equals": 2}]}, {"B": 2}, False),
        ({"not": {"field": "A", "exists": True}}, {"A": 1}, False),
        (
            {"field": "Address.Country", "equals": "Germany"},
            {"Address": {"Country": "germany"}},
            True,
        ),
        ({"field": "Address.Country", "exists": True}, {"Address": None}, False),
    ],
)
def test_condition_operators(condition, fields, expected):
    policy = policy_with({}, rules=[{"id": "r", "when": condition, "target": {"user": A}}])
    decision = route(lead(1, **fields), policy, {}, decided_at=NOON).decision
    assert (decision.rule_id == "r") is expected


def test_no_rule_matched_goes_to_the_fallback_owner():
    policy = policy_with(
        {},
        rules=[
            {"id": "web", "when": {"field": "LeadSource", "equals": "Web"}, "target": {"user": A}}
        ],
    )
    outcome = route(lead(1, LeadSource="Phone"), policy, {}, decided_at=NOON)
    assert (outcome.decision.owner_id, outcome.decision.rule_id) == (MANAGER, FALLBACK_RULE_ID)
    assert outcome.decision.sla_minutes == 60
    assert outcome.pool_state is None


# --- pools -----------------------------------------------------------------------------


def test_smooth_weighted_cycle_interleaves():
    assert pool_cycle(((A, "2"), (B, "1"), (C, "1"))) == (A, B, C, A)
    assert pool_cycle(((A, "0.5"), (B, "1"))) == (B, A, B)


def test_round_robin_takes_turns_and_ignores_weights():
    members = [{"user_id": A, "weight": 5}, {"user_id": B}, {"user_id": C}]
    decisions, pools = run(policy_with({"p": {"strategy": "round_robin", "members": members}}), 7)
    assert [d.owner_id for d in decisions] == [A, B, C, A, B, C, A]
    assert pools["p"].pointer == 1


def test_weighted_round_robin_over_1000_leads_matches_weights_within_2_percent():
    members = [
        {"user_id": A, "weight": 3},
        {"user_id": B, "weight": 2},
        {"user_id": C, "weight": 1.5},
        {"user_id": D, "weight": 0.5},
    ]
    decisions, _ = run(
        policy_with({"p": {"strategy": "weighted_round_robin", "members": members}}), 1000
    )
    shares = Counter(d.owner_id for d in decisions)
    total_weight = 7.0
    for member in members:
        expected = member["weight"] / total_weight
        assert abs(shares[member["user_id"]] / 1000 - expected) <= 0.02, (member, shares)
    # smooth: the heaviest member never gets more than two leads in a row
    owners = [d.owner_id for d in decisions]
    assert max(len(run_) for run_ in "".join("x" if o == A else " " for o in owners).split()) <= 2


def test_unavailable_members_are_skipped_and_shares_stay_proportional():
    members = [
        {"user_id": A, "weight": 2},
        {"user_id": B, "weight": 1},
        {"user_id": C, "weight": 1, "available": False},
    ]
    decisions, _ = run(
        policy_with({"p": {"strategy": "weighted_round_robin", "members": members}}), 300
    )
    shares = Counter(d.owner_id for d in decisions)
    assert C not in shares
    assert shares[A] == 200 and shares[B] == 100
    skipped = [s for d in decisions for s in d.explanation["pool"]["skipped"]]
    assert {"user_id": C, "reason": "unavailable (policy)"} in skipped


def test_member_status_marks_out_of_office_members():
    members = [{"user_id": A}, {"user_id": B}]
    decisions, _ = run(
        policy_with({"p": {"strategy": "round_robin", "members": members}}),
        4,
        member_status={A: False},
    )
    assert [d.owner_id for d in decisions] == [B, B, B, B]
    assert decisions[0].explanation["pool"]["skipped"] == [
        {"user_id": A, "reason": "unavailable (status)"}
    ]


def test_daily_caps_are_respected_and_reset_on_the_policy_timezone_day():
    members = [{"user_id": A, "daily_cap": 2}, {"user_id": B, "daily_cap": 1}]
    policy = policy_with(
        {"p": {"strategy": "round_robin", "members": members, "fallback_owner": MANAGER}}
    )
    # 23:00 New York on the 24th is 04:00 UTC on the 25th: still the 24th for the caps
    evening = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    decisions, pools = run(policy, 5, start=evening, step=timedelta(minutes=10))
    assert [d.owner_id for d in decisions] == [A, B, A, MANAGER, MANAGER]
    assert decisions[3].explanation["fallback"] == "no eligible member in pool p"
    assert pools["p"].assigned_today == {A: 2, B: 1}
    assert pools["p"].day == "2026-11-24"
    next_morning = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    outcome = route(lead(99), policy, pools, decided_at=next_morning)
    assert outcome.decision.owner_id in (A, B)
    assert outcome.pool_state.day == "2026-11-25"
    assert sum(outcome.pool_state.assigned_today.values()) == 1


def test_a_decision_stamped_on_an_earlier_day_never_takes_the_pool_back_a_day():
    members = [{"user_id": A, "daily_cap": 2}, {"user_id": B, "daily_cap": 2}]
    policy = policy_with(
        {"p": {"strategy": "round_robin", "members": members, "fallback_owner": MANAGER}}
    )
    after_midnight = datetime(2026, 11, 25, 5, 1, tzinfo=UTC)  # 00:01 on the 25th in New York
    decisions, pools = run(policy, 2, start=after_midnight)
    assert [d.owner_id for d in decisions] == [A, B]
    assert (pools["p"].day, pools["p"].assigned_today) == ("2026-11-25", {A: 1, B: 1})
    # Another host's clock, a moment behind, still says the 24th: it takes the next turn...
    late = route(lead(98), policy, pools, decided_at=after_midnight - timedelta(minutes=2))
    assert late.decision.owner_id == A
    assert late.decision.explanation["pool"]["day"] == "2026-11-24"
    # ...but leaves the 25th's counts alone, so the caps of the 25th still hold.
    assert late.pool_state == PoolState("p", 1, "2026-11-25", {A: 1, B: 1})
    pools = {"p": late.pool_state}
    owners = []
    for number in range(3):
        outcome = route(lead(100 + number), policy, pools, decided_at=after_midnight)
        pools = {"p": outcome.pool_state}
        owners.append(outcome.decision.owner_id)
    assert owners == [B, A, MANAGER]  # each at 2 on the 25th, then nobody is eligible
    assert pools["p"].assigned_today == {A: 2, B: 2}


def test_everyone_ineligible_uses_the_policy_fallback_when_the_pool_has_none():
    policy = policy_with(
        {"p": {"strategy": "round_robin", "members": [{"user_id": A, "available": False}]}}
    )
    outcome = route(lead(1), policy, {}, decided_at=NOON)
    assert outcome.decision.owner_id == MANAGER
    assert outcome.pool_state.pointer == 0


def test_same_pool_state_twice_gives_the_same_decision():
    policy = load_policy()
    state = {
        "emea": PoolState(
            "emea", pointer=3, day="2026-11-24", assigned_today={"0055g0000000007AAA": 4}
        )
    }
    subject = lead(7, LeadSource="Web", Address=address("FR"))
    first = route(subject, policy, state, decided_at=NOON)
    second = route(subject, policy, state, decided_at=NOON)
    assert first == second
    assert state["emea"].pointer == 3  # inputs are not mutated
    assert (
        RoutingDecision.from_json(json.loads(json.dumps(first.decision.to_json())))
        == first.decision
    )
    assert PoolState.from_json(first.pool_state.to_json()) == first.pool_state


def test_naive_decision_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        route(lead(1), load_policy(), {}, decided_at=datetime(2026, 11, 24, 12))


def test_route_in_order_routes_by_creation_time():
    policy = policy_with(
        {"p": {"strategy": "round_robin", "members": [{"user_id": A}, {"user_id": B}]}}
    )
    late = RecordState("Lead", "00Q000000000000002", {"CreatedDate": "2026-11-24T12:00:00Z"})
    early = RecordState("Lead", "00Q000000000000001", {"CreatedDate": "2026-11-24T11:00:00Z"})
    decisions, _ = route_in_order([late, early], policy)
    assert [(d.lead_id, d.owner_id) for d in decisions] == [
        (early.record_id, A),
        (late.record_id, B),
    ]
    assert decisions[0].decided_at == datetime(2026, 11, 24, 11, tzinfo=UTC)


# --- lead facts, assignment, SLA ---------------------------------------------------------


def test_needs_routing():
    policy = load_policy()
    assert needs_routing(lead(1, OwnerId="00G5g0000000001EAA"), policy)
    assert needs_routing(lead(1, OwnerId=ev.INTEGRATION), policy)
    assert needs_routing(lead(1), policy)
    assert not needs_routing(lead(1, OwnerId=ev.REP), policy)
    assert not needs_routing(lead(1, OwnerId=None, IsConverted=True), policy)
    deleted = RecordState("Lead", ev.LEAD, {"OwnerId": None}, deleted=True)
    assert not needs_routing(deleted, policy)


def test_lead_created_at_prefers_created_date_then_create_commit():
    with_date = RecordState(
        "Lead", ev.LEAD, {"CreatedDate": "2026-11-02T14:00:00.000+0000"}, created_ms=0
    )
    assert lead_created_at(with_date) == ev.MONDAY
    assert (
        lead_created_at(
            RecordState("Lead", ev.LEAD, {}, created_ms=int(ev.MONDAY.timestamp() * 1000))
        )
        == ev.MONDAY
    )
    with pytest.raises(ValueError, match="neither CreatedDate nor a CREATE"):
        lead_created_at(RecordState("Lead", ev.LEAD, {}))


def test_assignment_fields_for_a_routed_lead():
    policy = load_policy()
    later = NOON + timedelta(seconds=90)
    decision = route(lead(1, LeadSource="Other"), policy, {}, decided_at=later).decision
    values = assignment_fields(decision, created_at=NOON)
    assert values == {
        "OwnerId": decision.owner_id,
        "Owner_Assigned_At__c": "2026-11-24T17:01:30.000Z",
        "Assignment_Latency_Minutes__c": 1.5,
        "Routing_Policy_Version__c": policy.version,
        "Routing_Rule__c": "na-default",
    }


def test_routing_to_a_queue_sets_no_assignment_time():
    decision = route(lead(1, LeadSource="Partner"), load_policy(), {}, decided_at=NOON).decision
    values = assignment_fields(decision, created_at=NOON)
    assert values["OwnerId"] == "00G5g0000000002EAA"
    assert "Owner_Assigned_At__c" not in values


def test_assignment_from_owner_change():
    created_owned = fold_events(
        [ev.event("Lead", ev.LEAD, "CREATE", ev.ms(0), user=ev.REP, OwnerId=ev.REP)], ev.LEAD
    )
    assert assignment_from_owner_change(created_owned, ev.MONDAY) == (ev.MONDAY, 0.0)

    history = [
        ev.lead_created(
            ev.LEAD, ev.ms(0), owner=ev.SANDBOX_QUEUE, user=ev.INTEGRATION, typical=False
        ),  # owned by a queue
        ev.event("Lead", ev.LEAD, "UPDATE", ev.ms(5), user=ev.REP, OwnerId=ev.INTEGRATION),
        ev.event("Lead", ev.LEAD, "UPDATE", ev.ms(12.5), user=ev.REP, OwnerId=ev.REP),
        ev.event(
            "Lead", ev.LEAD, "UPDATE", ev.ms(30), user=ev.REP, OwnerId=ev.REP2
        ),  # a later re-assignment does not move it
    ]
    for order in (history, list(reversed(history))):
        state = fold_events(order, ev.LEAD)
        assert assignment_from_owner_change(
            state, ev.MONDAY, non_assignees=frozenset({ev.INTEGRATION})
        ) == (
            ev.at(12.5),
            12.5,
        )
    queue_only = fold_events(
        [
            ev.lead_created(
                ev.LEAD, ev.ms(0), owner=ev.SANDBOX_QUEUE, user=ev.INTEGRATION, typical=False
            )
        ],
        ev.LEAD,
    )
    assert assignment_from_owner_change(queue_only, ev.MONDAY) is None


@pytest.mark.parametrize(
    ("response_minute", "as_of_minute", "expected"),
    [(60, 61, "met"), (60.01, 61, "breached"), (None, 60, "pending"), (None, 60.01, "breached")],
)
def test_sla_status(response_minute, as_of_minute, expected):
    """The boundaries of the SLA rule, as the rollups apply it (``per_lead.sla_flags``)."""
    response = ev.at(response_minute) if response_minute is not None else None
    responded_at = pd.Series(
        [pd.Timestamp(response) if response else pd.NaT], dtype="datetime64[ns, UTC]"
    )
    due = pd.Series([pd.Timestamp(ev.MONDAY + timedelta(minutes=60))])
    flags = sla_flags(responded_at.notna(), responded_at, due, pd.Timestamp(ev.at(as_of_minute)))
    states = dict(
        zip(("met", "breached", "pending"), (bool(f.iloc[0]) for f in flags), strict=True)
    )
    assert [state for state, on in states.items() if on] == [expected]
