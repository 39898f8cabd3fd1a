"""KPI_PUSHGATEWAY_URL: at the end of a Dagster run the host's metric totals reach a real
Prometheus Pushgateway (Debian `prometheus-pushgateway`), grouped by job and instance; a
gateway that is down costs an error count, never the run."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kpi_pipeline.telemetry import metrics_store
from kpi_pipeline_tests.support.harness import BIN
from kpi_pipeline_tests.support.metrics_server import (
    http_get,
    metrics_env,
    parse_exposition,
    require_binary,
    run_recording,
)

LEAD = "/data/LeadChangeEvent"
RUN_LEDGER_SNAPSHOT = ("job", "execute", "-m", "kpi_pipeline.definitions", "-j", "ledger_snapshot")

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    binary = require_binary("prometheus-pushgateway", "apt-get install -y prometheus-pushgateway")
    url = f"http://127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "pushgateway.log").open("w"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_get(f"{url}/-/ready", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "pushgateway.log").read_text()
        time.sleep(0.2)
    yield url
    process.kill()
    process.wait(timeout=30)


def _run_in_its_own_process(tmp_path: Path, gateway: str) -> Path:
    """`dagster job execute` of ledger_snapshot: one process per run, as a run worker is.
    Returns its metrics directory."""
    metrics_dir = tmp_path / "metrics"
    env = {
        **metrics_env(metrics_dir),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KPI_PUSHGATEWAY_URL": gateway,
    }
    (tmp_path / "dagster_home").mkdir()
    done = subprocess.run(
        [str(BIN / "dagster"), *RUN_LEDGER_SNAPSHOT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return metrics_dir


def _recorded(metrics_dir: Path) -> dict:
    registry = CollectorRegistry()
    registry.register(metrics_store.MetricsDirCollector(metrics_dir))
    return parse_exposition(generate_latest(registry).decode())


def test_a_run_pushes_the_host_totals_to_the_gateway(gateway: str, tmp_path: Path) -> None:
    # Values another process on this host recorded earlier (a sensor tick, another run).
    run_recording(
        tmp_path / "metrics",
        f'm.record_cdc_event("{LEAD}", "CREATE", 3)\nm.record_error("outreach_send")',
    )
    _run_in_its_own_process(tmp_path, gateway)

    status, body = http_get(f"{gateway}/metrics")
    assert status == 200
    pushed = parse_exposition(body)
    group = {("instance", socket.gethostname()), ("job", "kpi_pipeline")}

    def value(name: str, **labels: str) -> float:
        wanted = set(labels.items()) | group
        (found,) = [v for (n, ls), v in pushed.items() if n == name and set(ls) == wanted]
        return found

    assert value("cdc_events_total", channel=LEAD, change_type="CREATE") == 3
    assert value("errors_total", area="outreach_send") == 1
    assert value("push_time_seconds") > 0


def test_a_gateway_that_is_down_never_fails_the_run(tmp_path: Path) -> None:
    metrics_dir = _run_in_its_own_process(tmp_path, f"http://127.0.0.1:{_free_port()}")
    # Each step process of the run pushes (and here fails) once as it exits.
    assert _recorded(metrics_dir)[("errors_total", (("area", "metrics"),))] >= 1
