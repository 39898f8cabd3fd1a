"""The Grafana dashboard covers the plan's PromQL verbatim and every metric of CONTRACTS.md §6.
(That each query is valid PromQL with data is checked against a real Prometheus in
web/test_prometheus.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from kpi_pipeline_tests.support.metric_names import CONTRACT_METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "observability" / "grafana" / "kpi_pipeline.json"
PLAN_QUERIES = {
    "rate(cdc_events_total[5m])",
    "histogram_quantile(0.95, rate(first_response_latency_seconds_bucket[5m]))",
    "sum(rate(errors_total[5m])) by (area)",
}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_plans_queries_are_panels_verbatim() -> None:
    assert set(expressions()) >= PLAN_QUERIES


def test_every_metric_has_a_panel() -> None:
    for metric in CONTRACT_METRICS:
        assert any(metric in expr for expr in expressions()), f"no panel shows {metric}"
    assert "sum(rate(decisions_total[5m])) by (workload, outcome)" in expressions()
    assert "sum(rate(auth_requests_total[5m])) by (result)" in expressions()


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    cells = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not (cells & area), f"panel {panel['title']!r} overlaps another"
        cells |= area
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
