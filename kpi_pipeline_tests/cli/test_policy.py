from __future__ import annotations

import json

from kpi_pipeline.cli.main import main
from kpi_pipeline.core.policy.load import default_policy_path
from kpi_pipeline_tests.support.events import (
    INTEGRATION,
    REP,
    SANDBOX_QUEUE,
    event,
    lead_created,
    ms,
)
from kpi_pipeline_tests.support.policies import packaged_policy_document, validate_policy_cli


def test_validate_accepts_the_packaged_policy(capsys):
    assert main(["policy", "validate", str(default_policy_path())]) == 0
    assert "valid (version 2026.12-1" in capsys.readouterr().out


def test_validate_rejects_a_broken_policy_naming_each_json_path(tmp_path, capsys):
    raw = packaged_policy_document()
    raw["rules"][2]["target"] = {"pool": "ghost-pool"}
    raw["pools"]["na"]["members"][0]["weight"] = -1
    assert validate_policy_cli(raw, tmp_path) == 1
    out = capsys.readouterr().out
    assert "2 fault(s)" in out
    assert "$.rules[2].target.pool: pool 'ghost-pool' is not defined" in out
    assert "$.pools.na.members[0].weight: weight must be > 0" in out


def test_simulate_compares_owner_and_rule_distribution_with_the_baseline(tmp_path, capsys):
    events = []
    for i in range(12):
        lead_id = f"00Q0000000001{i:02d}AAA"
        source = "Partner" if i % 3 == 0 else "Web"
        events.append(
            lead_created(
                lead_id,
                ms(i),
                owner=SANDBOX_QUEUE,
                user=INTEGRATION,
                typical=False,
                LeadSource=source,
                Company=f"Co {i}",
                Email=f"p{i}@co.example",
            )
        )
        events.append(
            event("Lead", lead_id, "UPDATE", ms(i + 1), user=REP, OwnerId="0055g0000000004AAA")
        )
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(json.dumps(e.to_recorded()) for e in events), encoding="utf-8")

    raw = json.loads(default_policy_path().read_text(encoding="utf-8"))
    raw["version"] = "2026.11-2"
    raw["rules"] = [
        r for r in raw["rules"] if r["id"] != "partner-referrals"
    ]  # partner leads go to the NA pool now
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps(raw), encoding="utf-8")

    assert main(["policy", "simulate", "--policy", str(candidate), "--events", str(stream)]) == 0
    out = capsys.readouterr().out
    assert "leads in stream: 12; routed: 12; owner changes vs baseline:" in out
    # the 4 partner leads leave the queue, and the round robin shifts for the rest
    moved = int(out.splitlines()[0].rsplit(":", 1)[1])
    assert 4 <= moved <= 12
    owner_rows = [line.split() for line in out.splitlines() if line.startswith(("005", "00G"))]
    assert ["00G5g0000000002EAA", "0", "4", "-4"] in owner_rows
    assert sum(int(row[1]) for row in owner_rows) == sum(int(row[2]) for row in owner_rows) == 12
    assert "policy 2026.11-2 vs baseline 2026.12-1" in out
    rule_rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.startswith(("na-", "partner-referrals"))
    }
    assert rule_rows["na-high-intent"] == ["8", "8", "+0"]
    assert rule_rows["na-default"] == ["4", "0", "+4"]
    assert rule_rows["partner-referrals"] == ["0", "4", "-4"]


def test_simulate_reports_a_broken_policy(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    stream = tmp_path / "events.jsonl"
    stream.write_text("", encoding="utf-8")
    assert main(["policy", "simulate", "--policy", str(bad), "--events", str(stream)]) == 1
    assert "kpi-pipeline policy validate" in capsys.readouterr().err
