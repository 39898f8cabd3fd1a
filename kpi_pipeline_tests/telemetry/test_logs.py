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

from kpi_pipeline.config import Settings
from kpi_pipeline.telemetry import logs
from kpi_pipeline_tests.support.metrics_server import (
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


def test_a_record_dagster_relogged_in_a_run_keeps_its_message_name_and_run() -> None:
    """What a run's console gets for a captured kpi_pipeline line: Dagster's rewritten message,
    its metadata, and (through keep_logger_names) the original logger's name as an extra."""
    logs.keep_logger_names()
    original = logging.getLogger("kpi_pipeline.app.outbox_drain").makeRecord(
        "kpi_pipeline.app.outbox_drain", logging.INFO, __file__, 1, "sent", (), None
    )
    assert getattr(original, logs.ORIGIN_ATTR) == "kpi_pipeline.app.outbox_drain"
    meta = {"run_id": "r-1", "job_name": "j", "step_key": "s", "orig_message": "sent"}
    relogged = _record("j - r-1 - s - sent", dagster_meta=meta, kpi_logger=original.name)
    relogged.name = "dagster"
    parsed = json.loads(logs.json_formatter().format(relogged))
    assert parsed["msg"] == "sent" and parsed["logger"] == "kpi_pipeline.app.outbox_drain"
    assert (parsed["run_id"], parsed["job_name"], parsed["step_key"]) == ("r-1", "j", "s")
    # The root handler leaves such a record to the run's console: no line printed twice.
    root_filter = logs._NotPrintedElsewhere()
    assert not root_filter.filter(relogged) and root_filter.filter(_record("plain"))


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
            [sys.executable, "-m", "kpi_pipeline.cli.main", "status"],
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


def _key_material(data_dir: Path) -> list[str]:
    """The base64 body lines of every private key the sandbox run left in its directory (its
    TLS key, a connected app's key): none of them may appear in a log."""
    bodies = []
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.suffix in (".db", ".log"):
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        if "PRIVATE KEY-----" in text:
            block = text.split("PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
            bodies += [line.strip() for line in block.splitlines() if len(line.strip()) >= 40]
    return bodies


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_dagster_run_logs_our_lines_as_json_with_the_run_id(tmp_path: Path) -> None:
    """dagster-daemon with KPI_LOG_FORMAT=json and --log-format json: the code server (where
    cdc_sensor reads the sandbox org) and the process_cdc_batch run workers write to the
    daemon's log. Every line of our code there (``kpi_pipeline.*`` loggers and the ops'
    ``context.log``) is one JSON object with the keys; lines in a run carry its run_id; the
    token and key material appear nowhere."""

    from kpi_pipeline.sandbox.runtime import read_endpoints, shutdown_sandbox
    from kpi_pipeline_tests.support.harness import (
        daemon_env,
        instance_state,
        kill,
        start_daemon,
        wait_for_state,
        write_instance_yaml,
    )

    home = tmp_path / "dagster_home"
    write_instance_yaml(home)  # the repository's: kpi_pipeline lines captured into runs
    data_dir = tmp_path / "kpi"
    env = daemon_env(
        home,
        data_dir,
        KPI_LOG_FORMAT="json",
        KPI_CDC_MODE="sensor",
        KPI_SANDBOX_SEED="13",
        KPI_SANDBOX_LEADS_PER_DAY="5",
    )
    log_path = tmp_path / "daemon.log"
    assert instance_state(env)["runs"] == []  # create the storage before the daemon does

    daemon = start_daemon(env, log_path, ["--log-format", "json"])
    try:
        state = wait_for_state(
            env,
            lambda s: any(
                r["job"] == "process_cdc_batch" and r["status"] == "SUCCESS" for r in s["runs"]
            ),
            420,
            log_path,
        )
        endpoints = read_endpoints(data_dir)
    finally:
        kill(daemon)
        shutdown_sandbox(data_dir)
    run_ids = {r["id"] for r in state["runs"] if r["job"] == "process_cdc_batch"}

    daemon_log = log_path.read_text()
    ours: list[dict] = []
    for line in daemon_log.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            # Not JSON: only Dagster's own text may be (a run's first events come before any
            # resource). A kpi_pipeline logger's name in it would be one of our lines in text.
            assert "kpi_pipeline." not in line or " - dagster - " in line, line
            assert "routing:" not in line and "first touch:" not in line, line
            continue
        if not isinstance(parsed, dict) or "msg" not in parsed:
            continue  # Dagster's own JSON lines (--log-format json) name the message "event"
        assert set(parsed) >= KEYS, line
        ours.append(parsed)

    # Our loggers, in the code server (the sensor) and in the run workers.
    assert any(p["logger"].startswith("kpi_pipeline.") for p in ours), daemon_log[-3000:]
    routing = [p for p in ours if p["msg"].startswith("routing:")]
    assert routing, daemon_log[-3000:]
    assert all(p.get("run_id") in run_ids and p.get("step_key") for p in routing), routing
    # A kpi_pipeline line Dagster captured in a run keeps its logger's name and gets the run's.
    captured = [p for p in ours if p["logger"].startswith("kpi_pipeline.") and p.get("run_id")]
    assert any(p["run_id"] in run_ids for p in captured), daemon_log[-3000:]

    sandbox_log = (data_dir / "sandbox.log").read_text()
    for line in sandbox_log.splitlines():
        if line.strip():
            assert set(json.loads(line)) >= KEYS, line
    everything = daemon_log + sandbox_log
    assert endpoints is not None and len(endpoints.access_token) >= 8
    assert endpoints.access_token not in everything
    assert "PRIVATE KEY" not in everything
    key_lines = _key_material(data_dir)  # the connected app's JWT key and the TLS key
    assert len(key_lines) >= 10, "the sandbox left no private key to look for"
    for body in key_lines:
        assert body not in everything
