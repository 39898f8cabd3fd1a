"""KPI values from a small recorded event stream, end to end through `kpi-pipeline replay`,
against numbers worked out by hand (CONTRACTS.md §4): answered, breached, open-breach and
pending leads, an automation user's task that must not count, a response before creation,
and an email send (EmailMessage + Task at the same instant)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kpi_pipeline.cli.main import main as cli_main
from kpi_pipeline_tests.support.events import (
    REP_B,
)
from kpi_pipeline_tests.support.kpi_stream import POLICY, recorded_stream


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(json.dumps(m) + "\n" for m in recorded_stream()))
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
