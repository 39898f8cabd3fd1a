"""Run every ``bench/bench_*.py`` once, quickly, in sequence (``make bench``).

Each script runs with small sizes (``SMALL_ARGS``) so the whole set takes a few minutes on
2 cores; the figures in RESULTS.md come from the full-size commands listed there. Stops at
the first script that fails and prints a summary of what ran. A new benchmark must get an
entry in ``SMALL_ARGS``: running one with unknown (possibly full-size) defaults could take
far longer than ``make bench`` promises, so an unlisted script is refused before anything runs.

    python bench/run_all.py [--only NAME ...] [--daemon]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

# Small sizes per script: the same code paths as the full runs, a fraction of the work.
SMALL_ARGS: dict[str, list[list[str]]] = {
    # Needs PostgreSQL, RabbitMQ and Redis; starts its own Celery workers.
    "bench_celery_scale.py": [["--workers", "1", "2", "--days", "5", "--leads-per-day", "200"]],
    # dagster dev in stream mode, a small backlog, then a short live window (SQLite ledger).
    "bench_catchup.py": [
        ["--ledger", "sqlite", "--events", "2000", "--post-seconds", "20", "--warmup", "2"]
    ],
    "bench_client_drain.py": [["--events", "5000", "--repeats", "1"]],
    "bench_decode.py": [["--events", "5000", "--repeats", "1"]],
    "bench_killed_worker.py": [["--kill", "worker"]],
    "bench_kpis.py": [["--leads", "50000", "--days", "10", "--repeats", "1"]],
    # dagster dev takes 15-40 s to start and catch up; the windows themselves are short.
    "bench_live.py": [["--seconds", "20", "--warmup", "2", "--drain-seconds", "20"]],
    "bench_live_scenarios.py": [
        [
            "burst",
            *("--pre-seconds", "5", "--burst-seconds", "5", "--post-seconds", "10"),
            *("--warmup", "2", "--drain-seconds", "20"),
        ]
    ],
    "bench_lead_partitions.py": [["--events", "3000", "--round", "1000", "--workers", "1,2"]],
    "bench_latency.py": [["inprocess", "--interval", "5", "--seconds", "20"]],
    "bench_metrics.py": [
        ["--runs", "20", "--small-burst", "7", "--threads", "5", "--seconds", "2"]
    ],
    "bench_recovery.py": [["--leads", "20", "--wave-leads", "10", "--days", "0.5"]],
    "bench_replay.py": [["--events", "5000"]],
    # The sandbox org's serve process over a small simulated org, one re-sync window.
    "bench_resync.py": [["--leads", "300", "--ledger", "sqlite"]],
    "bench_outbox_confirm.py": [["--rows", "400"]],
    "bench_sensor_drain.py": [["--leads", "1000", "--bound", "500"]],
    "bench_staging.py": [["--responses", "50"]],
    "bench_token_cache.py": [["--calls", "2000", "--uncached", "20"]],
    "bench_workloads.py": [["--leads", "2000", "--repeats", "1"]],
}
# The real dagster-daemon scenario needs ~2 minutes even when short (startup, warm-up, drain).
DAEMON_ARGS = ["daemon", "--seconds", "30", "--drain-seconds", "60"]


def plan(only: list[str], daemon: bool) -> list[list[str]]:
    """The commands to run, or SystemExit naming a script without small sizes."""
    scripts = sorted(p.name for p in BENCH_DIR.glob("bench_*.py"))
    unknown = [name for name in scripts if name not in SMALL_ARGS]
    if unknown:
        raise SystemExit(
            f"no small sizes for {', '.join(unknown)}: add an entry to SMALL_ARGS in "
            f"{Path(__file__).name} (flags that make it finish in well under a minute)"
        )
    wanted = [name for name in scripts if not only or name.removesuffix(".py") in only]
    missing = sorted(set(only) - {name.removesuffix(".py") for name in scripts})
    if missing:
        raise SystemExit(f"--only names unknown benchmarks: {missing}; choose from {scripts}")
    commands = [[name, *args] for name in wanted for args in SMALL_ARGS[name]]
    if daemon and "bench_latency.py" in wanted:
        commands.append(["bench_latency.py", *DAEMON_ARGS])
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=[], help="benchmark names, e.g. bench_decode")
    parser.add_argument(
        "--daemon", action="store_true", help="also run the dagster-daemon latency scenario"
    )
    args = parser.parse_args()
    summary: list[tuple[str, str, float]] = []
    for command in plan(args.only, args.daemon):
        label = " ".join(command)
        print(f"\n=== {label}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(BENCH_DIR / command[0]), *command[1:]])
        elapsed = time.perf_counter() - started
        summary.append((label, "ok" if code == 0 else f"FAILED (exit {code})", elapsed))
        if code != 0:
            break
    print("\n| benchmark (small sizes) | result | time |")
    print("| --- | --- | --- |")
    for label, result, elapsed in summary:
        print(f"| {label} | {result} | {elapsed:.1f} s |")
    print(f"total {sum(s[2] for s in summary):.1f} s")
    return 0 if all(result == "ok" for _, result, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
