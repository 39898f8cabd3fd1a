"""Metric values recorded by short-lived processes survive them, a server restart and
compaction, and are exposed from the start (CONTRACTS.md §6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_pipeline_tests.support.metric_names import CONTRACT_METRICS
from kpi_pipeline_tests.support.metrics_server import (
    LEAD,
    MAIN_COMMAND,
    METRICS_COMMAND,
    ONE_RUN,
    http_get,
    metrics_env,
    parse_exposition,
    run_command,
    run_recording,
    scrape_once,
    start_metrics_server,
)

ALL_NAMES = set(CONTRACT_METRICS)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def compact(metrics_dir: Path) -> str:
    return run_command(metrics_dir, *METRICS_COMMAND, "compact", check=True).stdout


def owners_of_files(metrics_dir: Path) -> set[str]:
    return {p.name[: -len(".db")].split("_")[-1] for p in metrics_dir.glob("*.db")}


def test_values_survive_the_recording_processes_and_a_server_restart(metrics_dir: Path) -> None:
    for _ in range(3):
        run_recording(metrics_dir, ONE_RUN)
    before = scrape_once(metrics_dir)
    assert value(before, "cdc_events_total", channel=LEAD, change_type="CREATE") == 15
    assert (
        value(
            before, "decisions_total", workload="lead_route", outcome="routed", policy_version="v3"
        )
        == 3
    )
    assert value(before, "errors_total", area="cdc") == 3
    assert value(before, "first_response_latency_seconds_count") == 3
    assert value(before, "first_response_latency_seconds_bucket", le="600.0") == 3
    assert value(before, "first_response_latency_seconds_bucket", le="300.0") == 0
    assert value(before, "assignment_latency_seconds_sum") == 9
    assert value(before, "auth_requests_total", result="success") == 3

    # The restarted server compacts the finished runs (and the first server) at start.
    server = start_metrics_server(metrics_dir)
    try:
        after_restart = parse_exposition(server.scrape())
        run_recording(metrics_dir, ONE_RUN)
        after_one_more = parse_exposition(server.scrape())
    finally:
        server.stop()
    assert after_restart == before
    assert value(after_one_more, "cdc_events_total", channel=LEAD, change_type="CREATE") == 20
    assert value(after_one_more, "first_response_latency_seconds_count") == 4


def test_every_metric_name_is_exposed_before_any_event(metrics_server) -> None:
    text = metrics_server.scrape()
    samples = parse_exposition(text)
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert exposed == ALL_NAMES
    for channel in (
        "/data/LeadChangeEvent",
        "/data/TaskChangeEvent",
        "/data/EmailMessageChangeEvent",
    ):
        assert value(samples, "cdc_events_total", channel=channel, change_type="UPDATE") == 0
        assert value(samples, "cdc_lag_seconds", channel=channel) == 0
    assert value(samples, "errors_total", area="writeback") == 0
    assert value(samples, "auth_requests_total", result="hit") == 0
    for outcome in ("sent", "retry", "failed", "superseded"):
        assert value(samples, "writeback_sends_total", outcome=outcome) == 0
    for status in ("pending", "claimed", "sent", "failed"):
        assert value(samples, "writeback_outbox_rows", status=status) == 0
    assert value(samples, "writeback_expired_claims") == 0
    assert value(samples, "first_response_latency_seconds_count") == 0
    for channel in ("/data/LeadChangeEvent", "/data/TaskChangeEvent"):
        assert value(samples, "cdc_pending_batches", channel=channel) == 0
        assert value(samples, "cdc_oldest_pending_batch_age_seconds", channel=channel) == 0


def test_healthz_reports_the_directory_and_unknown_paths_are_404(
    metrics_server, metrics_dir: Path
) -> None:
    status, body = http_get(f"{metrics_server.url}/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["metrics_dir"] == str(metrics_dir)
    assert health["ledger"] == "ok"
    status, body = http_get(f"{metrics_server.url}/nope")
    assert status == 404 and "/metrics" in body and "/readyz" in body


def test_cdc_lag_is_the_most_recent_measurement_of_any_run(metrics_dir: Path) -> None:
    run_recording(metrics_dir, f'm.set_cdc_lag("{LEAD}", 500)')
    run_recording(metrics_dir, f'm.set_cdc_lag("{LEAD}", 20)')
    # A server (re)start initialises the channel at 0 with timestamp 0: it must not win.
    samples = scrape_once(metrics_dir)
    assert value(samples, "cdc_lag_seconds", channel=LEAD) == 20


def test_compaction_keeps_totals_and_removes_finished_runs_files(metrics_dir: Path) -> None:
    for _ in range(5):
        run_recording(metrics_dir, ONE_RUN + f'm.set_cdc_lag("{LEAD}", 42)')
    run_owners = owners_of_files(metrics_dir)
    assert len(run_owners) == 5
    # The server compacted the five finished runs when it started.
    compacted = scrape_once(metrics_dir, compact_interval=3600)
    assert not (owners_of_files(metrics_dir) & run_owners)
    assert value(compacted, "cdc_events_total", channel=LEAD, change_type="CREATE") == 25
    assert value(compacted, "first_response_latency_seconds_bucket", le="+Inf") == 5
    assert value(compacted, "cdc_lag_seconds", channel=LEAD) == 42
    assert "absorbed" in compact(metrics_dir)  # the stopped server's files, idempotently
    assert scrape_once(metrics_dir) == compacted
    # Only the last server's liveness file is left: every other process was compacted away.
    assert len(list(metrics_dir.glob("*.alive"))) == 1


def test_compaction_leaves_a_running_process_alone(metrics_dir: Path) -> None:
    code = f"from kpi_pipeline.telemetry import metrics as m\nm.record_cdc_event('{LEAD}', 'CREATE', 7)\nprint('ok', flush=True)\ninput()\n"
    running = subprocess.Popen(
        [sys.executable, "-c", code],
        env=metrics_env(metrics_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout and running.stdout.readline().strip() == "ok"
        live_owner = next(p.name.split(".")[0] for p in metrics_dir.glob("*.alive"))
        compact(metrics_dir)
        assert live_owner in owners_of_files(metrics_dir)
        run_recording(metrics_dir, f"m.record_cdc_event('{LEAD}', 'CREATE', 7)")  # while it lives
    finally:
        running.communicate("\n", timeout=60)
    compact(metrics_dir)
    assert live_owner not in owners_of_files(metrics_dir)
    samples = scrape_once(metrics_dir)
    assert value(samples, "cdc_events_total", channel=LEAD, change_type="CREATE") == 14


def test_an_interrupted_compaction_neither_loses_nor_double_counts(
    metrics_dir: Path, tmp_path: Path
) -> None:
    for _ in range(2):
        run_recording(metrics_dir, ONE_RUN)
    raw_counters = sorted(metrics_dir.glob("counter_*.db"))
    saved = tmp_path / "saved"
    saved.mkdir()
    for file in raw_counters:
        shutil.copy(file, saved / file.name)
    compact(metrics_dir)
    # Crash after the manifest commit, before deleting the absorbed files: they are back...
    for file in saved.iterdir():
        shutil.copy(file, metrics_dir / file.name)
    manifest = metrics_dir / "manifest.json"
    state = manifest.read_text()
    generation = int(state.split('"generation": ')[1].split(",")[0])
    names = ", ".join(f'"{f.name}"' for f in saved.iterdir())
    manifest.write_text(f'{{"generation": {generation}, "absorbed": [{names}]}}')
    # ...and a crash while writing the next generation left a partial archive behind.
    shutil.copy(
        metrics_dir / f"counter_archive-{generation}.db",
        metrics_dir / f"counter_archive-{generation + 1}.db",
    )

    samples = scrape_once(metrics_dir, compact_interval=3600)
    assert value(samples, "cdc_events_total", channel=LEAD, change_type="CREATE") == 10
    assert value(samples, "errors_total", area="cdc") == 2
    assert not any((metrics_dir / f.name).exists() for f in saved.iterdir())


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            "import os; print(os.getpid())",
        ],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "1"


def test_processes_with_the_same_pid_never_share_files(metrics_dir: Path) -> None:
    """Two runs in separate PID namespaces (like two containers on one volume) both have PID 1
    at the same time; with PID-named files they would write one file concurrently."""
    if not _unshare_works():
        pytest.skip("needs `unshare --pid` (root or user namespaces) to run two processes as PID 1")
    go = metrics_dir.parent / "go"
    # Both record once, wait until both are alive, then record concurrently (with PID-named
    # files, stock multiprocess mode loses about half of these counts).
    code = (
        "import os, time\nfrom kpi_pipeline.telemetry import metrics as m\n"
        f"m.record_cdc_event('{LEAD}', 'CREATE')\nprint('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
        f"for _ in range(5000):\n    m.record_cdc_event('{LEAD}', 'CREATE')\n"
    )
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    runs = [
        subprocess.Popen(
            [*prefix, sys.executable, "-c", code],
            env=metrics_env(metrics_dir),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    assert [run.stdout.readline().strip() for run in runs if run.stdout] == ["ready", "ready"]
    go.touch()
    assert [run.wait(timeout=60) for run in runs] == [0, 0]
    assert {name.split("-")[0] for name in owners_of_files(metrics_dir)} == {"1"}
    assert len(owners_of_files(metrics_dir)) == 2
    samples = scrape_once(metrics_dir)
    assert value(samples, "cdc_events_total", channel=LEAD, change_type="CREATE") == 10002


def test_a_forked_child_records_into_files_of_its_own(metrics_dir: Path) -> None:
    """A child forked after the parent recorded (multiprocessing's fork start method, a
    worker pool) writes its own files, and both processes' counts add up."""
    run_recording(
        metrics_dir,
        """
        import os
        m.record_error("cdc")
        child = os.fork()
        if child == 0:
            for _ in range(3):
                m.record_error("cdc")
            os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        m.record_error("cdc")
        """,
    )
    assert len(owners_of_files(metrics_dir)) == 2
    assert value(scrape_once(metrics_dir), "errors_total", area="cdc") == 5


def test_conflicting_metrics_directories_are_a_clear_error(tmp_path: Path) -> None:
    env = metrics_env(tmp_path / "a")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "b")
    done = subprocess.run(
        [sys.executable, "-c", "import kpi_pipeline.telemetry.metrics as m; m.configure()"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR" in done.stderr and "KPI_METRICS_DIR" in done.stderr


def test_an_unusable_metrics_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kpi_pipeline.telemetry import metrics as m; m.record_error('cdc')",
        ],
        env=metrics_env(blocker / "metrics"),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "Cannot create the metrics directory" in done.stderr and "KPI_METRICS_DIR" in done.stderr


def test_importing_records_nothing_creates_nothing_and_changes_no_environment(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "not-yet"
    code = (
        "import os, kpi_pipeline.telemetry.metrics, kpi_pipeline.telemetry.exposition\n"
        "print('PROMETHEUS_MULTIPROC_DIR' in os.environ)\n"
    )
    env = metrics_env(directory)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
    assert not directory.exists()


def test_one_process_records_into_one_directory(tmp_path: Path) -> None:
    code = (
        "from kpi_pipeline.telemetry import metrics as m\n"
        "from kpi_pipeline.config import Settings\n"
        f"m.configure(Settings(metrics_dir='{tmp_path / 'a'}'))\n"
        f"m.configure(Settings(metrics_dir='{tmp_path / 'a'}'))  # the same: fine\n"
        f"m.configure(Settings(metrics_dir='{tmp_path / 'b'}'))\n"
    )
    env = metrics_env(tmp_path / "a")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "metrics already record into" in done.stderr and "KPI_METRICS_DIR" in done.stderr


def test_the_directory_is_exported_for_child_processes(metrics_dir: Path) -> None:
    code = (
        "import os\n"
        "from kpi_pipeline.telemetry import metrics as m\n"
        "m.record_error('cdc')\n"
        "print(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=metrics_env(metrics_dir),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(metrics_dir.resolve())
    assert os.path.isabs(done.stdout.strip())


def test_a_scrape_after_a_burst_of_runs_compacts_first(metrics_dir: Path) -> None:
    server = start_metrics_server(metrics_dir, compact_interval=3600)
    try:
        for _ in range(10):  # more finished processes than CROWDED_PROCESSES
            run_recording(metrics_dir, ONE_RUN)
        assert len(owners_of_files(metrics_dir)) >= 10
        samples = parse_exposition(server.scrape())
        remaining = owners_of_files(metrics_dir)
    finally:
        server.stop()
    assert value(samples, "cdc_events_total", channel=LEAD, change_type="CREATE") == 50
    assert len(remaining) <= 2  # the archive and the running server's own files


def test_every_literal_error_area_at_a_call_site_is_initialised() -> None:
    """Areas missing from KNOWN_ERROR_AREAS have no series until their first error."""
    import re

    from kpi_pipeline.telemetry.metrics import KNOWN_ERROR_AREAS

    package = Path(__file__).resolve().parents[2] / "kpi_pipeline"
    used = {
        (match.group(1), str(path.relative_to(package)))
        for path in package.rglob("*.py")
        for match in re.finditer(r"record_error\(\s*[\"']([^\"']+)[\"']\s*\)", path.read_text())
    }
    missing = sorted((area, where) for area, where in used if area not in KNOWN_ERROR_AREAS)
    assert not missing, (
        f"add these areas to KNOWN_ERROR_AREAS in kpi_pipeline/telemetry/metrics.py: {missing}"
    )


def test_serve_on_a_busy_port_or_with_a_bad_interval_says_what_to_change(metrics_dir: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_command(metrics_dir, *MAIN_COMMAND, "metrics", "serve", "--port", str(port))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    done = run_command(metrics_dir, *MAIN_COMMAND, "metrics", "serve", "--compact-interval", "0")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not a positive number of seconds" in done.stderr


def test_recording_works_when_prometheus_client_was_imported_first(metrics_dir: Path) -> None:
    """Libraries may import prometheus_client before us, before the directory is exported."""
    code = (
        "import prometheus_client\n"
        "from kpi_pipeline.telemetry import metrics as m\n"
        f"m.record_cdc_event('{LEAD}', 'DELETE', 4)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], env=metrics_env(metrics_dir), check=True, timeout=60
    )
    samples = scrape_once(metrics_dir)
    assert value(samples, "cdc_events_total", channel=LEAD, change_type="DELETE") == 4


def test_healthz_is_503_when_the_directory_is_gone(metrics_server, metrics_dir: Path) -> None:
    shutil.rmtree(metrics_dir)
    status, body = http_get(f"{metrics_server.url}/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "error" and "KPI_METRICS_DIR" in body
