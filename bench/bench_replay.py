"""End-to-end `kpi-pipeline replay` throughput on a simulated stream.

The sandbox simulator (``kpi_pipeline.sandbox.simulator.simulate``) writes realistic
activity into a scratch sandbox store, ``SandboxStore.export_recorded`` turns it into
recorded JSON Lines (CONTRACTS.md §2), and the first ``--events`` lines are replayed with
``kpi_pipeline.app.replay.replay``: parse, temporary SQLite ledger, the batch processor with
the event clock, lead facts CSV, KPI CSVs and flywheel JSONL. Timed phases:

* simulate + export (not part of the replay, reported for context);
* replay end to end (what the user waits for), and the parse share of it.

    python bench/bench_replay.py [--events 100000] [--batch-size 500] [--seed 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from kpi_pipeline.app.replay import read_events, replay
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore

EVENTS_PER_LEAD = 3.8  # measured on the simulator's default mix; only sizes the simulation
LEADS_PER_DAY = 400  # the sandbox default arrival rate
START_MS = 1_790_000_000_000  # fixed, so the stream is the same on every run


def simulated_stream(path: Path, events: int, seed: int) -> tuple[int, float]:
    """Write at least ``events`` recorded events to ``path`` (then cut to exactly that)."""
    leads = math.ceil(events / EVENTS_PER_LEAD * 1.05)
    days = max(1.0, leads / LEADS_PER_DAY)
    end_ms = START_MS + int(days * 86_400_000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as scratch:
        store = SandboxStore(
            Path(scratch) / "sandbox.db", clock=lambda: end_ms, retention_ms=10**13
        )
        simulate(store, leads=leads, days=days, seed=seed, start_ms=START_MS)
        full = Path(scratch) / "full.jsonl"
        written = store.export_recorded(full)
        store.close()
        if written < events:
            raise SystemExit(
                f"the simulation gave {written} events, fewer than {events}; raise EVENTS_PER_LEAD's margin"
            )
        with full.open(encoding="utf-8") as src, path.open("w", encoding="utf-8") as dst:
            for _, line in zip(range(events), src, strict=False):
                dst.write(line)
    return leads, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep the stream and outputs here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        stream = root / "stream.jsonl"
        leads, simulate_s = simulated_stream(stream, args.events, args.seed)

        started = time.perf_counter()
        parsed = read_events(stream)
        parse_s = time.perf_counter() - started

        started = time.perf_counter()
        result = replay(stream, root / "out", batch_size=args.batch_size)
        replay_s = time.perf_counter() - started

        report = {
            "events": result.events,
            "leads_simulated": leads,
            "leads_in_facts": result.leads,
            "decisions": result.decisions,
            "batch_size": args.batch_size,
            "simulate_and_export_s": round(simulate_s, 2),
            "parse_s": round(parse_s, 2),
            "replay_end_to_end_s": round(replay_s, 2),
            "events_per_s": round(result.events / replay_s),
            "stream_mib": round(stream.stat().st_size / 2**20, 1),
            "parsed_events": len(parsed),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
