"""Helpers for the metrics tests: recording "runs" as real short-lived processes, and a real
`kpi-pipeline metrics serve` subprocess over a per-test metrics directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

# `kpi-pipeline metrics` without importing the other areas (5x faster start); the full
# dispatcher is exercised by test_serve_on_a_busy_port_or_with_a_bad_interval_says_what_to_change.
METRICS_COMMAND = (sys.executable, "-m", "kpi_pipeline.cli.metrics")
# The full dispatcher, `kpi-pipeline ...`.
MAIN_COMMAND = (sys.executable, "-m", "kpi_pipeline.cli.main")

LEAD = "/data/LeadChangeEvent"
# What one short-lived pipeline process records (for run_recording): 5 Lead creates, a
# routing decision under policy v3, a 400 s first response, a 3 s assignment, a cdc error
# and a 0.2 s token request.
ONE_RUN = f"""
m.record_cdc_event("{LEAD}", "CREATE", 5)
m.record_decision("lead_route", "routed", "v3")
m.observe_first_response(400)
m.observe_assignment(3)
m.record_error("cdc")
m.record_auth("success", 0.2)
"""


def metrics_env(metrics_dir: Path, ledger_url: str | None = None) -> dict[str, str]:
    """Environment of a process recording into (or serving) metrics_dir, like a Dagster run.

    The ledger (whose outbox /metrics reports) is `ledger_url`, else a fresh SQLite ledger
    next to metrics_dir: never the repository's own .kpi_data."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "KPI_LEDGER_URL", "KPI_DATA_DIR")
    }
    env["KPI_METRICS_DIR"] = str(metrics_dir)
    env["KPI_DATA_DIR"] = str(metrics_dir.parent / "kpi_data")
    if ledger_url is not None:
        env["KPI_LEDGER_URL"] = ledger_url
    return env


def run_recording(metrics_dir: Path, body: str, prefix: tuple[str, ...] = ()) -> None:
    """Run `body` (Python, with `m` = kpi_pipeline.telemetry.metrics) in a fresh process that then exits."""
    code = "from kpi_pipeline.telemetry import metrics as m\n" + textwrap.dedent(body)
    subprocess.run(
        [*prefix, sys.executable, "-c", code], env=metrics_env(metrics_dir), check=True, timeout=60
    )


def run_command(
    metrics_dir: Path, *argv: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end in the environment of ``metrics_dir`` (see metrics_env), its
    output captured as text."""
    return subprocess.run(
        list(argv),
        env=metrics_env(metrics_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class MetricsServer:
    process: subprocess.Popen[str]
    url: str

    def scrape(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, body
        return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            # Generous: under heavy disk load an fsync in flight can delay the exit.
            self.process.wait(timeout=60)


WEB_SERVE_COMMAND = (sys.executable, "-m", "kpi_pipeline.cli.main", "web", "serve")


def start_metrics_server(
    metrics_dir: Path,
    port: int = 0,
    compact_interval: float = 60.0,
    ledger_url: str | None = None,
    *,
    command: Sequence[str] = (*METRICS_COMMAND, "serve"),
    extra_env: Mapping[str, str] | None = None,
) -> MetricsServer:
    """Start the web server (by default through its old name, `metrics serve`) and wait for
    the address it prints."""
    process = subprocess.Popen(
        [*command, "--port", str(port), "--compact-interval", str(compact_interval)],
        env={**metrics_env(metrics_dir, ledger_url), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if "serving metrics on " not in line:
        process.kill()
        _, stderr = process.communicate(timeout=60)
        raise AssertionError(f"metrics serve did not start: {line!r} {stderr}")
    url = line.split("serving metrics on ", 1)[1].split("/metrics", 1)[0]
    return MetricsServer(process, url)


def scrape_once(
    metrics_dir: Path, **server_options: float
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Start a server over ``metrics_dir`` (start_metrics_server's options), parse one scrape
    of /metrics and stop the server."""
    server = start_metrics_server(metrics_dir, **server_options)
    try:
        return parse_exposition(server.scrape())
    finally:
        server.stop()


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def metrics_server(metrics_dir: Path) -> Iterator[MetricsServer]:
    server = start_metrics_server(metrics_dir)
    yield server
    server.stop()


def require_binary(name: str, install_hint: str) -> str:
    """Path of an external tool. Missing: skip on a developer machine, FAIL in CI (CI=true)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    message = f"`{name}` not found on PATH; install it with: {install_hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI=true: integration tools are required)")
    pytest.skip(message)
