"""KPI_PUSHGATEWAY_URL: at the end of a Dagster run the host's metric totals reach a real
Prometheus Pushgateway (Debian `prometheus-pushgateway`), grouped by job and instance; a
gateway that is down costs an error count, never the run."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import metrics, wiring
from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline_tests.observability.conftest import http_get, parse_exposition, require_binary

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


def _snapshot_run(tmp_path: Path) -> dg.ExecuteInProcessResult:
    wiring.reset_cache()
    with dg.instance_for_test() as instance:
        return defs.resolve_job_def("ledger_snapshot").execute_in_process(
            instance=instance, resources={"pipeline": PipelineResource(data_dir=str(tmp_path))}
        )


def test_a_run_pushes_the_host_totals_to_the_gateway(
    gateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_PUSHGATEWAY_URL", gateway)
    metrics.record_error("outreach_send")  # something this host recorded before the run
    assert _snapshot_run(tmp_path).success

    status, body = http_get(f"{gateway}/metrics")
    assert status == 200
    pushed = parse_exposition(body)
    host = socket.gethostname()
    key = ("errors_total", (("area", "outreach_send"), ("instance", host), ("job", "kpi_pipeline")))
    assert pushed[key] >= 1
    # The push time the gateway records for the group: proof the run's end pushed it.
    assert any(name == "push_time_seconds" for name, _labels in pushed)


def test_a_gateway_that_is_down_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPI_PUSHGATEWAY_URL", f"http://127.0.0.1:{_free_port()}")
    before = metrics.sample_value("errors_total", {"area": "metrics"})
    assert _snapshot_run(tmp_path).success
    assert metrics.sample_value("errors_total", {"area": "metrics"}) == before + 1
