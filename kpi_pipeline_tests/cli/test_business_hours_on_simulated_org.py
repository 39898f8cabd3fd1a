"""The sandbox's simulated reps answer within their region's working hours (the packaged
policy's calendars), so replaying a simulated fortnight shows what the business-hours clocks
are for: wall-clock TTFR has a tail of nights, weekends and Thanksgiving, business-minute
TTFR stays near the reps' delays."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

from kpi_pipeline.cli.main import main
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore

MONDAY = int(datetime(2026, 11, 16, tzinfo=UTC).timestamp() * 1000)  # Thanksgiving week after
DAY = 86_400_000


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def test_simulated_responses_follow_working_hours(tmp_path: Path, capsys) -> None:
    store = SandboxStore(tmp_path / "sandbox.db", clock=lambda: MONDAY + 30 * DAY)
    simulate(store, leads=300, days=14, seed=5, start_ms=MONDAY)
    store.close()
    events = tmp_path / "events.jsonl"
    assert (
        main(["sandbox", "export", "--store", str(tmp_path / "sandbox.db"), "--out", str(events)])
        == 0
    )
    assert main(["replay", str(events), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    with (tmp_path / "out" / "lead_facts.csv").open(newline="") as handle:
        answered = [r for r in csv.DictReader(handle) if r["Time_to_First_Response__c"]]
    assert len(answered) > 150
    wall = [float(r["Time_to_First_Response__c"]) for r in answered]
    business = [float(r["Time_to_First_Response_Business_Minutes__c"]) for r in answered]
    assert all(b <= w for b, w in zip(business, wall, strict=True))
    # The reps' delays are lognormal with a 25-minute median of working time: the business
    # p90 stays within a few working hours, the wall-clock p90 crosses nights and weekends.
    assert quantile(business, 0.9) < 4 * 60
    assert quantile(wall, 0.9) > 12 * 60
    assert quantile(wall, 0.5) > quantile(business, 0.5)
