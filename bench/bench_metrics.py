"""Latency of `kpi-pipeline metrics serve` /metrics under concurrent scrapes.

Fills a fresh metrics directory the way production does (many short-lived runs, each a real
forked process recording through the call-site functions), starts the real server as a
subprocess and hammers /metrics from N client threads for D seconds, twice: with every
finished run's files still on disk (the worst case between compactions) and after
`kpi-pipeline metrics compact`. Target from the plan: p95 < 100 ms.

    python bench/bench_metrics.py [--runs 200] [--small-burst 7] [--threads 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHANNELS = ("/data/LeadChangeEvent", "/data/TaskChangeEvent", "/data/EmailMessageChangeEvent")
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE")
WORKLOADS = ("lead_route", "first_touch", "outreach_template")
OUTCOMES = ("routed", "skipped", "fallback", "recommended", "no_match")
POLICY_VERSIONS = ("v1", "v2", "v3")
AREAS = (
    "auth",
    "cdc",
    "cdc_replay_invalid",
    "ledger",
    "writeback",
    "workloads",
    "flywheel",
    "kpis",
)


def one_run(seed: int) -> None:
    """What a sensor tick plus its processing run record: every label combination appears
    across runs (3x4 + 45 + 8 + 3 series, 4 histograms)."""
    from kpi_pipeline.telemetry import metrics as m

    for i, channel in enumerate(CHANNELS):
        for change_type in CHANGE_TYPES:
            m.record_cdc_event(channel, change_type, 1 + (seed + i) % 7)
        m.set_cdc_lag(channel, float(seed % 90))
    for workload in WORKLOADS:
        for outcome in OUTCOMES:
            m.record_decision(workload, outcome, POLICY_VERSIONS[seed % 3])
    for k in range(20):
        m.observe_first_response(60.0 * (1 + (seed * 7 + k) % 600))
        m.observe_assignment(0.5 + (seed + k) % 40)
    m.record_error(AREAS[seed % len(AREAS)])
    m.record_auth("hit")
    m.record_auth("success", 0.15)


def record_runs(count: int) -> None:
    context = multiprocessing.get_context("fork")
    for seed in range(count):
        process = context.Process(target=one_run, args=(seed,))
        process.start()
        process.join()
        assert process.exitcode == 0, f"recording run {seed} failed"


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, int]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kpi_pipeline.cli.main",
            "metrics",
            "serve",
            "--port",
            "0",
            "--compact-interval",
            "86400",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline() if server.stdout else ""
    address = line.split("http://", 1)[1].split("/metrics", 1)[0]
    host, port = address.rsplit(":", 1)
    return server, host, int(port)


def scrape(host: str, port: int) -> bytes:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, response.status
        return body
    finally:
        connection.close()


def load(host: str, port: int, threads: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        mine = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            scrape(host, port)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    return latencies


def report(label: str, latencies: list[float], seconds: float, body: bytes, files: int) -> None:
    ordered = sorted(latencies)
    quantile = statistics.quantiles(ordered, n=100)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(
        f"{label}: {len(ordered)} scrapes in {seconds:.0f} s ({len(ordered) / seconds:.0f}/s), "
        f"p50 {quantile[49] * 1000:.1f} ms, p95 {quantile[94] * 1000:.1f} ms, p99 {quantile[98] * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms; {series} samples, {len(body) / 1024:.1f} KiB, {files} metric files before the load"
    )


def phase(
    label: str, runs: int, threads: int, seconds: float, host: str, port: int, metrics_dir: Path
) -> None:
    if runs:
        started = time.perf_counter()
        record_runs(runs)
        print(f"recorded {runs} runs (forked processes) in {time.perf_counter() - started:.1f} s")
    files = len(list(metrics_dir.glob("*.db")))
    latencies = load(host, port, threads, seconds)
    report(label, latencies, seconds, scrape(host, port), files)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="finished runs whose files are on disk"
    )
    parser.add_argument(
        "--small-burst",
        type=int,
        default=7,
        help="runs left uncompacted (below the scrape-time threshold)",
    )
    parser.add_argument("--threads", type=int, default=20, help="concurrent scraping clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        metrics_dir = Path(tmp) / "metrics"
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ["KPI_METRICS_DIR"] = str(metrics_dir)
        env = dict(os.environ)
        server, host, port = start_server(env)  # compacts at start: nothing yet
        try:
            phase(
                f"{args.threads} threads, after a burst of {args.runs} runs",
                args.runs,
                args.threads,
                args.seconds,
                host,
                port,
                metrics_dir,
            )
            phase(
                f"{args.threads} threads, {args.small_burst} uncompacted runs",
                args.small_burst,
                args.threads,
                args.seconds,
                host,
                port,
                metrics_dir,
            )
            subprocess.run(
                [sys.executable, "-m", "kpi_pipeline.cli.main", "metrics", "compact"],
                env=env,
                check=True,
            )
            phase("1 thread, compacted", 0, 1, min(args.seconds, 5.0), host, port, metrics_dir)
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
