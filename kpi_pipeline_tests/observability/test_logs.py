"""Logs: one JSON object per line with the context keys when KPI_LOG_FORMAT=json, and no
secret in any line, in either format. The integration test runs the embedded sandbox org,
the web server (whose readiness probe authenticates with the sandbox's token) and the
status command, all in JSON, and greps everything they wrote."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpi_pipeline import logs
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.observability.conftest import (
    WEB_SERVE_COMMAND,
    http_get,
    metrics_env,
    start_metrics_server,
)

KEYS = {"ts", "level", "logger", "msg"}


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("kpi_pipeline.test", logging.WARNING, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_carries_the_keys_and_the_known_context() -> None:
    formatter = logs.json_formatter()
    with logs.bind_context(channel="/data/LeadChangeEvent", run_id="run-1", not_a_key="x"):
        line = formatter.format(_record("batch %s done", batch_id="b-7", lead_id="00Q1"))
    parsed = json.loads(line)
    assert set(parsed) >= KEYS and parsed["level"] == "warning"
    assert parsed["logger"] == "kpi_pipeline.test" and parsed["msg"] == "batch %s done"
    assert parsed["channel"] == "/data/LeadChangeEvent" and parsed["run_id"] == "run-1"
    assert parsed["batch_id"] == "b-7" and parsed["lead_id"] == "00Q1"
    assert "not_a_key" not in parsed


def test_secrets_are_redacted_in_both_formats() -> None:
    logs.register_secret("s3cr3t-token-value")
    key = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----"
    message = (
        f"token s3cr3t-token-value; session 00D000000000001AAA!AQ4AQFakeSession; "
        f"Authorization: Bearer abcdefghijklmnop; access_token=zzzzzzzz; {key}"
    )
    for formatter in (logs.json_formatter(), logs._RedactingText("%(message)s")):
        line = formatter.format(_record(message))
        for secret in ("s3cr3t-token-value", "AQ4AQFakeSession", "abcdefghijklmnop", "zzzzzzzz"):
            assert secret not in line
        assert "PRIVATE KEY" not in line and logs.REDACTED in line


@pytest.mark.integration
def test_a_sandbox_run_logs_json_lines_without_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kpi_pipeline.sandbox.runtime import ensure_sandbox, read_endpoints, shutdown_sandbox

    env = {
        "KPI_LOG_FORMAT": "json",
        "KPI_SANDBOX_LEADS_PER_DAY": "5",
        "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
        "KPI_READY_ORG_PROBE_SECONDS": "0.1",
        "KPI_CDC_MODE": "sensor",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "kpi_data"  # start_metrics_server's KPI_DATA_DIR
    (tmp_path / "metrics").mkdir()
    ensure_sandbox(data_dir, settings=Settings(data_dir=data_dir))  # inherits KPI_LOG_FORMAT
    server = start_metrics_server(tmp_path / "metrics", command=WEB_SERVE_COMMAND, extra_env=env)
    try:
        token = read_endpoints(data_dir).access_token
        for _ in range(5):  # each probe authenticates with the token
            assert http_get(f"{server.url}/readyz")[0] == 200
            time.sleep(0.15)
        status = subprocess.run(
            [sys.executable, "-m", "kpi_pipeline.cli", "status"],
            env={**metrics_env(tmp_path / "metrics"), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
    finally:
        server.stop()
        shutdown_sandbox(data_dir)
    _, server_log = server.process.communicate(timeout=30)

    streams = {
        "sandbox.log": (data_dir / "sandbox.log").read_text(),
        "web serve stderr": server_log,
        "status stderr": status.stderr,
    }
    for name, text in streams.items():
        lines = [line for line in text.splitlines() if line.strip()]
        for line in lines:
            parsed = json.loads(line)  # every line is one JSON object
            assert set(parsed) >= KEYS, (name, line)
    assert any("sandbox org serving" in line for line in streams["sandbox.log"].splitlines())
    everything = "\n".join([*streams.values(), status.stdout])
    assert len(token) >= 8 and token not in everything
    assert "PRIVATE KEY" not in everything
