"""A real Prometheus scrapes `kpi-pipeline metrics serve` while short-lived processes record,
and the plan's three PromQL queries answer (CONTRACTS.md §6). `promtool` lints the exposition."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpi_pipeline_tests.support.metrics_server import (
    LEAD,
    ONE_RUN,
    MetricsServer,
    http_get,
    require_binary,
    run_recording,
    start_metrics_server,
)

pytestmark = pytest.mark.integration

INSTALL_HINT = "apt-get install -y prometheus"
# One pipeline run, plus what the dashboard's other panels need data for.
RUN = (
    ONE_RUN
    + f"""
m.record_cdc_event("/data/TaskChangeEvent", "UPDATE", 2)
m.record_error("writeback")
m.set_cdc_lag("{LEAD}", 12.5)
m.record_auth("hit")
m.observe_processing_lag("{LEAD}", 0.2)
m.observe_writeback_lag(0.4)
"""
)
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "observability" / "grafana" / "kpi_pipeline.json"
PLAN_QUERIES = (
    "rate(cdc_events_total[5m])",
    "histogram_quantile(0.95, rate(first_response_latency_seconds_bucket[5m]))",
    "sum(rate(errors_total[5m])) by (area)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: kpi_pipeline\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if http_get(f"{self.url}/-/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"prometheus not ready after {timeout}s: {self.log.read_text()[-2000:]}"
        )

    def query(self, promql: str) -> list[dict]:
        status, body = http_get(f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def scrapes_of_target(self) -> float:
        result = self.query('count_over_time(up{job="kpi_pipeline"}[5m])')
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture
def prometheus_binary() -> str:
    return require_binary("prometheus", INSTALL_HINT)


def wait_for_scrapes(prometheus: Prometheus, at_least: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while prometheus.scrapes_of_target() < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} scrapes in {timeout}s"
        time.sleep(0.3)


@pytest.fixture
def served(
    metrics_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, MetricsServer]]:
    # Stream mode, so the scrape-time cdc_stream_alive series exist (0: nobody holds a
    # channel of this fresh ledger) for the dashboard's live-path panel.
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    holder = {"server": start_metrics_server(metrics_dir)}
    yield holder
    holder["server"].stop()


def test_prometheus_scrapes_runs_and_answers_the_plans_queries(
    prometheus_binary: str, metrics_dir: Path, tmp_path: Path, served: dict[str, MetricsServer]
) -> None:
    target = served["server"].url.removeprefix("http://")
    prometheus = Prometheus(prometheus_binary, tmp_path, target)
    try:
        prometheus.wait_ready()
        runs = 0
        for _ in range(3):  # runs start and exit between scrapes, so counters rise scrape by scrape
            run_recording(metrics_dir, RUN)
            runs += 1
            wait_for_scrapes(prometheus, prometheus.scrapes_of_target() + 1)

        # Restart the endpoint on the same port: nothing is lost, Prometheus sees no reset.
        port = int(target.rsplit(":", 1)[1])
        served["server"].stop()
        served["server"] = start_metrics_server(metrics_dir, port=port)
        for _ in range(2):
            run_recording(metrics_dir, RUN)
            runs += 1
            wait_for_scrapes(prometheus, prometheus.scrapes_of_target() + 1)
        wait_for_scrapes(prometheus, prometheus.scrapes_of_target() + 1)

        lead_rate = prometheus.query(
            f'rate(cdc_events_total{{channel="{LEAD}",change_type="CREATE"}}[5m])'
        )
        assert lead_rate and float(lead_rate[0]["value"][1]) > 0
        for promql in PLAN_QUERIES:
            assert prometheus.query(promql), f"no result for {promql}"
        p95 = prometheus.query(PLAN_QUERIES[1])[0]["value"][1]
        assert 300 < float(p95) <= 600  # every observation (400 s) falls in the (300, 600] bucket
        errors = {
            r["metric"]["area"]: float(r["value"][1]) for r in prometheus.query(PLAN_QUERIES[2])
        }
        assert errors["writeback"] > 0
        assert errors["cdc_stream"] == 0  # initialised series: an area without errors answers 0

        total = prometheus.query(f'cdc_events_total{{channel="{LEAD}",change_type="CREATE"}}')
        assert float(total[0]["value"][1]) == 5 * runs  # ONE_RUN's 5 Lead creates a run
        assert float(prometheus.query("sum(resets(cdc_events_total[5m]))")[0]["value"][1]) == 0
        assert (
            float(prometheus.query(f'cdc_lag_seconds{{channel="{LEAD}"}}')[0]["value"][1]) == 12.5
        )
        decisions = prometheus.query('decisions_total{workload="lead_route"}')
        assert float(decisions[0]["value"][1]) == runs
        # Every Grafana panel's query is valid PromQL and has data after these runs.
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel["targets"]:
                assert prometheus.query(target["expr"]), (
                    f"panel {panel['title']!r}: no data for {target['expr']}"
                )
    finally:
        prometheus.stop()


def test_promtool_accepts_the_exposition(
    metrics_dir: Path, served: dict[str, MetricsServer]
) -> None:
    promtool = require_binary("promtool", INSTALL_HINT)
    run_recording(metrics_dir, RUN)
    exposition = served["server"].scrape()
    assert "first_response_latency_seconds_bucket" in exposition
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""  # no lint findings either


def test_promtool_accepts_the_example_prometheus_config() -> None:
    promtool = require_binary("promtool", INSTALL_HINT)
    checked = subprocess.run(
        [promtool, "check", "config", str(REPO / "observability" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
