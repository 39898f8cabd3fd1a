"""A small recorded event stream and its policy (``kpi-test-1``) whose KPIs are worked out by
hand in cli/test_kpis_from_stream.py; the SLA breakdown and `policy simulate` tests reuse it."""

from __future__ import annotations

from datetime import UTC, datetime

from kpi_pipeline_tests.support.events import (
    AUTOMATION_USER,
    MINUTE,
    REP_A,
    REP_B,
    email_sent,
    lead_created,
    task_done,
)

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


def recorded_stream() -> list[dict]:
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


DAY0 = int(datetime(2026, 11, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00Z
