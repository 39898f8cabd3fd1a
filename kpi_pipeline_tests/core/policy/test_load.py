from __future__ import annotations

import copy

import pytest

from kpi_pipeline.core.policy.load import (
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)
from kpi_pipeline.core.policy.validation import PolicyError
from kpi_pipeline_tests.support.policies import (
    assert_faults_mention,
    packaged_policy_document,
    policy_faults,
)


def test_packaged_policy_is_valid_and_has_every_feature():
    policy = load_policy()
    assert policy.default_sla_minutes == 60
    assert len(policy.rules) >= 4 and policy.automation_users and policy.integration_users
    strategies = {pool.strategy for pool in policy.pools.values()}
    assert strategies == {"round_robin", "weighted_round_robin"}
    members = [m for pool in policy.pools.values() for m in pool.members]
    assert any(not m.available for m in members) and all(m.daily_cap for m in members)
    assert any(rule.target.queue for rule in policy.rules)
    assert any(rule.when is not None and rule.when.op in ("any", "all") for rule in policy.rules)
    assert validate_policy_file(default_policy_path()) == []


def test_schema_faults_name_the_json_path():
    raw = packaged_policy_document()
    raw["rules"][1]["target"] = {"user": "not-a-user-id"}
    raw["pools"]["apac"]["strategy"] = "random"
    del raw["default_sla_minutes"]
    paths = {fault.path for fault in policy_faults(raw)}
    assert {"$", "$.rules[1].target.user", "$.pools.apac.strategy"} <= paths


def test_every_semantic_fault_is_reported_at_once():
    raw = packaged_policy_document()
    raw["rules"][2]["target"] = {"pool": "nonexistent"}
    raw["rules"][3]["id"] = raw["rules"][0]["id"]
    raw["pools"]["na"]["members"][1]["weight"] = 0
    raw["pools"]["na"]["members"][2]["user_id"] = raw["pools"]["na"]["members"][0]["user_id"]
    raw["timezone"] = "Mars/Olympus_Mons"
    raw["rules"][0]["when"] = {"field": "AnnualRevenue", "range": {"min": 10, "max": 5}}
    assert_faults_mention(
        raw,
        [
            ("$.rules[2].target.pool", "not defined in $.pools"),
            ("$.rules[3].id", "already used by $.rules[0]"),
            ("$.pools.na.members[1].weight", "> 0"),
            ("$.pools.na.members[2].user_id", "listed twice"),
            ("$.timezone", "unknown IANA timezone"),
            ("$.rules[0].when.range", "greater than max"),
        ],
    )


def test_weighted_pool_needs_weights_and_fallback_owner_is_required():
    raw = packaged_policy_document()
    del raw["pools"]["emea"]["members"][0]["weight"]
    assert [f.path for f in policy_faults(raw)] == ["$.pools.emea.members[0].weight"]
    raw = packaged_policy_document()
    del raw["fallback_owner"]
    assert any("fallback_owner" in f.message for f in policy_faults(raw))


def test_malformed_condition_gets_a_useful_message():
    raw = packaged_policy_document()
    raw["rules"][1]["when"] = {"field": "Company", "startswith": "Acme"}
    (fault,) = policy_faults(raw)
    assert fault.path == "$.rules[1].when"
    assert "names no operator; use {'field': NAME, OP: VALUE}" in fault.message


def test_error_text_lists_every_fault():
    raw = packaged_policy_document()
    raw["rules"][2]["target"] = {"pool": "nope"}
    raw["rules"][3]["id"] = raw["rules"][0]["id"]
    with pytest.raises(PolicyError) as caught:
        load_policy(raw)
    assert "2 fault(s)" in str(caught.value)
    assert "$.rules[2].target.pool" in str(caught.value) and "$.rules[3].id" in str(caught.value)


def test_unreadable_files_are_faults_not_crashes(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": ', encoding="utf-8")
    (fault,) = validate_policy_file(broken)
    assert fault.path == "$" and "not valid JSON at line 1" in fault.message
    (missing,) = validate_policy_file(tmp_path / "missing.json")
    assert "file not found" in missing.message


def test_fingerprint_is_stable_and_content_sensitive():
    policy = load_policy()
    assert policy_fingerprint(policy) == policy_fingerprint(load_policy(packaged_policy_document()))
    changed = copy.deepcopy(packaged_policy_document())
    changed["pools"]["na"]["members"][0]["weight"] = 4
    assert policy_fingerprint(load_policy(changed)) != policy_fingerprint(policy)
    reordered = packaged_policy_document()
    reordered["automation_users"] = list(reversed(reordered["automation_users"]))
    assert policy_fingerprint(load_policy(reordered)) == policy_fingerprint(policy)


def test_weights_needing_an_absurd_cycle_are_rejected():
    raw = packaged_policy_document()
    raw["pools"]["na"]["members"][0]["weight"] = 0.001
    raw["pools"]["na"]["members"][1]["weight"] = 99
    (fault,) = policy_faults(raw)
    assert fault.path == "$.pools.na.members" and "simpler ratios" in fault.message


def test_faults_in_nested_conditions_point_at_the_innermost_condition():
    raw = packaged_policy_document()
    raw["rules"][1]["when"] = {
        "all": [{"field": "A", "equals": 1}, {"any": [{"field": "Company", "startswith": "Ac"}]}]
    }
    raw["rules"][2]["when"] = {"field": "AnnualRevenue", "range": {"min": 1, "mx": 2}}
    raw["rules"][3]["when"] = {"not": {"field": "Rating", "in": []}}
    raw["rules"][4]["when"] = {"field": "Rating", "in": ["Hot"], "equals": "Hot"}
    assert_faults_mention(
        raw,
        [
            ("$.rules[1].when.all[1].any[0]", "names no operator"),
            ("$.rules[2].when.range", "'mx' was unexpected"),
            ("$.rules[3].when.not.in", "should be non-empty"),
            ("$.rules[4].when", "several operators ['equals', 'in']"),
        ],
    )
