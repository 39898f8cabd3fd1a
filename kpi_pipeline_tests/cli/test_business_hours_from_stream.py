"""Business-hours clocks end to end: a small recorded stream through `kpi-pipeline replay`
with a policy that has calendars, against values worked out by hand; then the same stream
through `policy simulate`, where a calendar change shows its effect on the SLA breach %.

Policy: NA calendar America/New_York Mon-Fri 09:00-17:00, holiday 2026-11-26 (default);
EMEA calendar Europe/Berlin Mon-Fri 09:00-17:00 (rule "emea", Address.CountryCode DE).
SLA 60 minutes, 120 for "emea" and for partner leads. As of 2026-11-27T12:00Z.

  B1 Fri 11-20 16:30 EST (21:30Z), answered Mon 11-23 10:00 EST (15:00Z):
     wall 3930 min; business 30 (Fri) + 60 (Mon) = 90. Due Mon 09:30 EST -> breached both ways.
  B2 Tue 11-17 16:30 EST (21:30Z), answered 19:00 EST (Wed 00:00Z), after hours:
     wall 150; business 30. Due Wed 09:30 EST -> met in business hours, breached on the wall clock.
  B3 Wed 11-25 16:00 EST (21:00Z), partner (SLA 120), unanswered:
     due 60 Wed + Thanksgiving closed + 60 Fri = Fri 10:00 EST (15:00Z) > as-of -> pending;
     wall-clock due Wed 23:00Z < as-of -> breached.
  B4 Fri 10-23 16:00 CEST (14:00Z), Germany (EMEA, SLA 120), answered Mon 10-26 09:30 CET
     (08:30Z), after Berlin's clocks went back: wall 3990; business 60 + 30 = 90 <= 120 -> met;
     wall-clock -> breached.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest

from kpi_pipeline.cli.main import main as cli_main
from kpi_pipeline_tests.support.events import REP_A, REP_B, email_sent, lead_created
from kpi_pipeline_tests.support.processors import make_processor

AS_OF = "2026-11-27T12:00:00Z"
WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
POLICY = {
    "version": "bh-test-1",
    "timezone": "America/New_York",
    "default_sla_minutes": 60,
    "fallback_owner": "005000000000009AAA",
    "integration_users": ["005000000000001AAA"],
    "pools": {
        "reps": {"strategy": "round_robin", "members": [{"user_id": REP_A}, {"user_id": REP_B}]}
    },
    "calendars": {
        "na": {"timezone": "America/New_York", "hours": WEEK, "holidays": ["2026-11-26"]},
        "emea": {"timezone": "Europe/Berlin", "hours": WEEK},
    },
    "default_calendar": "na",
    "rules": [
        {
            "id": "partners",
            "when": {"field": "LeadSource", "in": ["Partner"]},
            "target": {"pool": "reps"},
            "sla_minutes": 120,
        },
        {
            "id": "emea",
            "when": {"field": "Address.CountryCode", "in": ["DE"]},
            "target": {"pool": "reps"},
            "sla_minutes": 120,
            "calendar": "emea",
        },
        {"id": "everyone", "target": {"pool": "reps"}},
    ],
}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _stream() -> list[dict]:
    germany = {"Address": {"CountryCode": "DE", "Country": "Germany"}}
    events = [
        lead_created("00Q0000000000B1AAA", ms("2026-11-20T21:30:00Z")),
        email_sent("02s0000000000B1AAA", "00Q0000000000B1AAA", ms("2026-11-23T15:00:00Z")),
        lead_created("00Q0000000000B2AAA", ms("2026-11-17T21:30:00Z")),
        email_sent("02s0000000000B2AAA", "00Q0000000000B2AAA", ms("2026-11-18T00:00:00Z")),
        lead_created("00Q0000000000B3AAA", ms("2026-11-25T21:00:00Z"), LeadSource="Partner"),
        lead_created("00Q0000000000B4AAA", ms("2026-10-23T14:00:00Z"), **germany),
        email_sent("02s0000000000B4AAA", "00Q0000000000B4AAA", ms("2026-10-26T08:30:00Z")),
    ]
    return [e.to_recorded() for e in events]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("business-hours")
    stream = root / "events.jsonl"
    stream.write_text("".join(json.dumps(m) + "\n" for m in _stream()))
    policy = root / "policy.json"
    policy.write_text(json.dumps(POLICY))
    return {"root": root, "stream": stream, "policy": policy}


@pytest.fixture(scope="module")
def replayed(files) -> Path:
    out = files["root"] / "out"
    argv = ["replay", str(files["stream"]), "--out", str(out), "--policy", str(files["policy"])]
    assert cli_main([*argv, "--as-of", AS_OF]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_lead_facts_carry_business_minutes_beside_wall_clock_minutes(replayed):
    facts = {r["Id"][-5:-3]: r for r in _rows(replayed / "lead_facts.csv")}
    got = {
        lead: (r["Time_to_First_Response__c"], r["Time_to_First_Response_Business_Minutes__c"])
        for lead, r in facts.items()
    }
    assert got == {
        "B1": ("3930.00", "90.00"),
        "B2": ("150.00", "30.00"),
        "B3": ("", ""),
        "B4": ("3990.00", "90.00"),
    }
    assert facts["B4"]["Routing_Rule__c"] == "emea"


def test_lead_facts_carry_the_business_hours_due_time_written_back(replayed):
    """SLA_Due_At__c, what SLA_Breached__c compares against in the org (docstring's dues;
    B4: 60 minutes Friday in Berlin, 60 from Monday 09:00 CET = 10:00 CET)."""
    facts = {r["Id"][-5:-3]: r["SLA_Due_At__c"] for r in _rows(replayed / "lead_facts.csv")}
    assert facts == {
        "B1": "2026-11-23T14:30:00.000Z",
        "B2": "2026-11-18T14:30:00.000Z",
        "B3": "2026-11-27T15:00:00.000Z",
        "B4": "2026-10-26T09:00:00.000Z",
    }


def test_sla_counts_business_hours(replayed):
    by_day = {r["day"]: r for r in _rows(replayed / "kpis" / "sla.csv")}
    counts = {d: (int(r["met"]), int(r["breached"]), int(r["pending"])) for d, r in by_day.items()}
    assert counts == {
        "2026-10-23": (1, 0, 0),  # B4 met in Berlin's hours
        "2026-11-17": (1, 0, 0),  # B2 answered after hours, before Wednesday 09:30
        "2026-11-20": (0, 1, 0),  # B1 late even in business hours
        "2026-11-25": (0, 0, 1),  # B3 pending until Friday 10:00 (Thanksgiving closed)
    }
    by_rule = {(r["rule"]): r for r in _rows(replayed / "kpis" / "sla_by_rule.csv")}
    assert (by_rule["emea"]["met"], by_rule["partners"]["pending"]) == ("1", "1")


def test_ttfr_rollup_has_business_percentiles_beside_wall_clock_ones(replayed):
    rows = {r["day"]: r for r in _rows(replayed / "kpis" / "ttfr_overall.csv")}
    assert float(rows["2026-11-20"]["ttfr_p50"]) == pytest.approx(3930.0)
    assert float(rows["2026-11-20"]["ttfr_business_p50"]) == pytest.approx(90.0)
    assert float(rows["2026-11-17"]["ttfr_business_p95"]) == pytest.approx(30.0)
    assert rows["2026-11-25"]["ttfr_business_p50"] == ""  # unanswered: no percentile


def test_shuffled_and_duplicated_delivery_gives_the_same_clocks(files, tmp_path):
    # Responses before their leads, every event twice: the business minutes and due times
    # are recomputed from the stored facts whichever arrives first.
    messages = _stream()
    shuffled = [m for m in messages if "Email" in m["channel"]] + messages
    stream = tmp_path / "shuffled.jsonl"
    stream.write_text("".join(json.dumps(m) + "\n" for m in shuffled + shuffled[::-1]))
    out = tmp_path / "out"
    argv = ["replay", str(stream), "--out", str(out), "--policy", str(files["policy"])]
    assert cli_main([*argv, "--as-of", AS_OF, "--batch-size", "2"]) == 0
    for name in ("kpis/sla.csv", "kpis/ttfr_overall.csv"):
        assert (out / name).read_text() == (files["root"] / "out" / name).read_text(), name
    # Owners may differ (round robin follows the order creations arrive in); the clocks not.
    clocks = ("Id", "Time_to_First_Response__c", "Time_to_First_Response_Business_Minutes__c")
    again, first = _rows(out / "lead_facts.csv"), _rows(files["root"] / "out" / "lead_facts.csv")
    assert [[r[c] for c in clocks] for r in again] == [[r[c] for c in clocks] for r in first]


def test_simulate_shows_a_calendar_change_on_past_leads(files, replayed, tmp_path, capsys):
    # Same rules, but NA opens 24x7 on weekdays' evenings too: 09:00-24:00.
    longer = json.loads(json.dumps(POLICY))
    longer["version"] = "bh-test-2"
    longer["calendars"]["na"]["hours"] = {
        d: [["09:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri")
    }
    candidate = tmp_path / "longer.json"
    candidate.write_text(json.dumps(longer))
    argv = ["policy", "simulate", "--policy", str(candidate), "--events", str(files["stream"])]
    assert cli_main([*argv, "--baseline", str(files["policy"]), "--as-of", AS_OF]) == 0
    out = capsys.readouterr().out
    assert "owner changes vs baseline: 0" in out  # routing is the same
    cells = _sla_cells(out)
    # Wall clock: met none; breached B1, B2, B3 (open), B4 -> 100 % for both policies.
    assert cells["wall clock"] == ["100.0%", "(0/4/0)", "100.0%", "(0/4/0)", "+0.0"]
    # Business hours, baseline (09:00-17:00): met B2, B4; breached B1; pending B3 -> 33.3 %.
    # Candidate (09:00-24:00): B1 due Fri 17:30 EST -> breached; B2's 19:00 answer now falls
    # in open time, 150 open minutes > 60 -> breached; B3 due Wed 18:00 EST (120 open minutes
    # from 16:00) -> breached; B4 (Berlin, unchanged) met -> 3 of 4 = 75 %.
    assert cells["business hours"] == ["75.0%", "(1/3/0)", "33.3%", "(2/1/1)", "+41.7"]


def test_simulate_over_a_ledger_uses_its_stored_clocks_as_the_baseline(files, tmp_path, capsys):
    from kpi_pipeline.adapters.ledger.store import Ledger
    from kpi_pipeline.core.events import read_recorded_lines
    from kpi_pipeline.core.policy.load import load_policy

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.from_url(url)
    processor = make_processor(ledger, load_policy(POLICY))
    processor.process(list(read_recorded_lines(files["stream"].read_text().splitlines())))
    ledger.dispose()
    argv = ["policy", "simulate", "--policy", str(files["policy"]), "--ledger-url", url]
    assert cli_main([*argv, "--as-of", AS_OF]) == 0
    cells = _sla_cells(capsys.readouterr().out)
    # The same policy recomputed from its calendars equals what the ledger stored (see the
    # module docstring for the hand counts).
    assert cells["wall clock"] == ["100.0%", "(0/4/0)", "100.0%", "(0/4/0)", "+0.0"]
    assert cells["business hours"] == ["33.3%", "(2/1/1)", "33.3%", "(2/1/1)", "+0.0"]


def _sla_cells(out: str) -> dict[str, list[str]]:
    """The SLA table of `policy simulate`: each row's cells after its two-word label, by label."""
    rows = (line for line in out.splitlines() if "%" in line)
    return {line.split("  ")[0].strip(): line.split()[2:] for line in rows}
