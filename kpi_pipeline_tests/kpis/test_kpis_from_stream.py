"""KPI values from a small recorded event stream, end to end through `kpi-pipeline replay`,
against numbers worked out by hand (CONTRACTS.md §4): answered, breached, open-breach and
pending leads, an automation user's task that must not count, a response before creation,
and an email send (EmailMessage + Task at the same instant)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kpi_pipeline.cli.main import main as cli_main
from kpi_pipeline_tests.processing.events import (
    AUTOMATION_USER,
    MINUTE,
    REP_A,
    REP_B,
    email_sent,
    lead_created,
    task_done,
)

DAY0 = int(datetime(2026, 11, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00Z
POLICY = {
    "version": "kpi-test-1",
    "timezone": "UTC",
    "default_sla_minutes": 60,
    "fallback_owner": "005000000000009AAA",
    "automation_users": [AUTOMATION_USER],
    "integration_users": ["005000000000001AAA"],
    "pools": {
        "reps": {"strategy": "round_robin", "members": [{"user_id": REP_A}, {"user_id": REP_B}]}
    },
    "rules": [
        {
            "id": "partners",
            "when": {"field": "LeadSource", "in": ["Partner"]},
            "target": {"pool": "reps"},
            "sla_minutes": 240,
        },
        {"id": "everyone", "target": {"pool": "reps"}},
    ],
}


def _stream() -> list[dict]:
    events = [
        # L1: answered by an email send at 10:30 (EmailMessage and Task at the same instant) -> 30 min, met.
        lead_created("00Q000000000001AAA", DAY0),
        email_sent("02s000000000001AAA", "00Q000000000001AAA", DAY0 + 30 * MINUTE),
        task_done("00T000000000001AAA", "00Q000000000001AAA", DAY0 + 30 * MINUTE),
        # L2: a call logged at 12:00 -> 120 min, breached (SLA 60).
        lead_created("00Q000000000002AAA", DAY0),
        task_done("00T000000000002AAA", "00Q000000000002AAA", DAY0 + 120 * MINUTE),
        # L3: only an automation user's task -> unanswered; due 11:00 < as-of 13:00 -> breached (open).
        lead_created("00Q000000000003AAA", DAY0),
        task_done(
            "00T000000000003AAA", "00Q000000000003AAA", DAY0 + 5 * MINUTE, user=AUTOMATION_USER
        ),
        # L4: created 12:30, nothing yet; due 13:30 > as-of -> pending.
        lead_created("00Q000000000004AAA", DAY0 + 150 * MINUTE),
        # L5: partner lead (SLA 240) answered at 12:40 -> 160 min, met. A task completed
        #     *before* its creation does not count.
        task_done("00T000000000005AAA", "00Q000000000005AAA", DAY0 - 10 * MINUTE),
        lead_created("00Q000000000005AAA", DAY0, LeadSource="Partner"),
        task_done("00T000000000006AAA", "00Q000000000005AAA", DAY0 + 160 * MINUTE, user=REP_B),
    ]
    return [e.to_recorded() for e in events]


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(json.dumps(m) + "\n" for m in _stream()))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    out = tmp_path / "out"
    code = cli_main(
        [
            "replay",
            str(stream),
            "--out",
            str(out),
            "--policy",
            str(policy),
            "--as-of",
            "2026-11-02T13:00:00Z",
        ]
    )
    assert code == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_ttfr_overall_matches_hand_computation(replayed):
    (row,) = _rows(replayed / "kpis" / "ttfr_overall.csv")
    # Responded: L1 30, L2 120, L5 160 minutes (L3's automation task and L5's early task excluded).
    assert row["day"] == "2026-11-02"
    assert int(row["leads"]) == 5
    assert int(row["responded"]) == 3
    assert float(row["coverage"]) == pytest.approx(3 / 5)
    # Linear interpolation over [30, 120, 160]: p50 = 120; p90 = 120 + 0.8*40 = 152; p95 = 120 + 0.9*40 = 156.
    assert float(row["ttfr_p50"]) == pytest.approx(120.0)
    assert float(row["ttfr_p90"]) == pytest.approx(152.0)
    assert float(row["ttfr_p95"]) == pytest.approx(156.0)


def test_sla_counts_unanswered_and_pending_leads(replayed):
    (row,) = _rows(replayed / "kpis" / "sla.csv")
    # met: L1 (30 <= 60), L5 (160 <= 240); breached: L2 (120 > 60), L3 (open, due 11:00 < 13:00); pending: L4.
    assert (int(row["met"]), int(row["breached"]), int(row["pending"])) == (2, 2, 1)
    assert float(row["breach_pct"]) == pytest.approx(100 * 2 / 4)


def test_lead_facts_carry_the_first_response_rules(replayed):
    facts = {r["Id"]: r for r in _rows(replayed / "lead_facts.csv")}
    assert facts["00Q000000000001AAA"]["First_Response_Source__c"] == "EmailMessage"
    assert facts["00Q000000000001AAA"]["Time_to_First_Response__c"] == "30.00"
    assert facts["00Q000000000002AAA"]["First_Response_Source__c"] == "Task"
    assert facts["00Q000000000003AAA"]["First_Response_At__c"] == ""
    assert facts["00Q000000000005AAA"]["First_Response_User__c"] == REP_B
    assert facts["00Q000000000005AAA"]["Routing_Rule__c"] == "partners"
    assert all(f["Routing_Policy_Version__c"] == "kpi-test-1" for f in facts.values())
