"""Routing policies as documents, for the tests: the packaged one to change, what loading or
`policy validate` says of one, and business-hours policies where every lead goes to the reps'
round-robin pool (REP_A, REP_B) and its SLA is counted on a New York calendar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpi_pipeline.cli.main import main
from kpi_pipeline.core.policy.load import default_policy_path, load_policy
from kpi_pipeline.core.policy.validation import PolicyError, PolicyFault
from kpi_pipeline_tests.support.events import REP_A, REP_B


def packaged_policy_document() -> dict:
    """The packaged example policy as a fresh JSON document, for a test to change."""
    return json.loads(default_policy_path().read_text(encoding="utf-8"))


def policy_faults(raw: dict) -> list[PolicyFault]:
    """What loading ``raw`` refuses (the test fails if it loads)."""
    with pytest.raises(PolicyError) as caught:
        load_policy(raw)
    return caught.value.faults


def assert_faults_mention(raw: dict, expected: list[tuple[str, str]]) -> None:
    """Loading ``raw`` is refused with a fault at each ``(path, text)``'s JSON path whose
    message contains the text; every miss is reported at once."""
    faults = {fault.path: fault.message for fault in policy_faults(raw)}
    missing = [(path, text) for path, text in expected if text not in faults.get(path, "")]
    assert not missing, f"faults {faults} lack {missing}"


def validate_policy_cli(raw: dict, tmp_path: Path) -> int:
    """`kpi-pipeline policy validate` of ``raw`` written to a file: its exit code."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return main(["policy", "validate", str(path)])


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def weekday_hours(opens: str, closes: str) -> dict[str, list[list[str]]]:
    """Open from ``opens`` to ``closes`` (HH:MM) Monday to Friday."""
    return {day: [[opens, closes]] for day in WEEKDAYS}


def new_york_policy(version: str, opens: str, closes: str, holidays: list[str]) -> dict:
    """Every lead to the reps' pool, a 60-minute SLA on the "na" calendar: America/New_York,
    open ``opens``-``closes`` on weekdays, closed on ``holidays`` (YYYY-MM-DD)."""
    return {
        "version": version,
        "timezone": "America/New_York",
        "default_sla_minutes": 60,
        "fallback_owner": "005000000000009AAA",
        "integration_users": ["005000000000001AAA"],
        "pools": {
            "reps": {
                "strategy": "round_robin",
                "members": [{"user_id": REP_A}, {"user_id": REP_B}],
            }
        },
        "calendars": {
            "na": {
                "timezone": "America/New_York",
                "hours": weekday_hours(opens, closes),
                "holidays": holidays,
            }
        },
        "default_calendar": "na",
        "rules": [{"id": "everyone", "target": {"pool": "reps"}}],
    }
