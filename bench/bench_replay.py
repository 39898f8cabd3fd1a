"""End-to-end `kpi-pipeline replay` throughput on a simulated stream.

The sandbox simulator (``kpi_pipeline.sandbox.simulator.simulate``) writes realistic
activity into a scratch sandbox store, ``SandboxStore.export_recorded`` turns it into
recorded JSON Lines (CONTRACTS.md §2), and the first ``--events`` lines are replayed with
``kpi_pipeline.app.replay.replay``: parse, temporary SQLite ledger, the batch processor with
the event clock, lead facts CSV, KPI CSVs and flywheel JSONL. Timed phases:

* simulate + export (not part of the replay, reported for context);
* replay end to end (what the user waits for), and the parse share of it; also the CPU
  seconds of the replay (``time.process_time``), steadier than wall time on a loaded machine.

``--baseline REV`` replays the same stream with the code of git revision ``REV`` as well
(``git archive`` into a scratch folder, run in a subprocess) and fails unless every output
file is byte-identical; both times are reported. ``--rounds N`` replays N times, new and
baseline alternately, and reports the medians and every pair (a shared machine's load
moves between runs; pairs taken back to back see about the same). ``--stream FILE`` reuses a stream written
before (``--keep``) instead of simulating one; ``--profile FILE`` runs the replay under
cProfile and writes its summary (top functions by cumulative and by own time) as text.

    python bench/bench_replay.py [--events 100000] [--batch-size 500] [--seed 3] [--keep DIR]
                                 [--stream FILE] [--baseline REV] [--rounds N]
                                 [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from kpi_pipeline.app.replay import read_events, replay
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore
from kpi_pipeline.wiring import replay_ports

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


REPO = Path(__file__).resolve().parent.parent
_BASELINE_RUN = """
import json, sys, time
from pathlib import Path
import kpi_pipeline
from kpi_pipeline.app.replay import replay
try:  # since the replay ports: the composition root hands replay its ledger and writers
    from kpi_pipeline.wiring import replay_ports
    ports = {"ports": replay_ports()}
except ImportError:  # a revision from before them
    ports = {}
assert Path(kpi_pipeline.__file__).resolve().is_relative_to(Path.cwd().resolve()), kpi_pipeline.__file__
started, cpu = time.perf_counter(), time.process_time()
replay(Path(sys.argv[1]), Path(sys.argv[2]), batch_size=int(sys.argv[3]), **ports)
print(json.dumps({"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}))
"""


def baseline_replay(rev: str, stream: Path, out: Path, batch_size: int) -> tuple[float, float]:
    """Replay ``stream`` with the package as it was at git revision ``rev``; (wall, CPU)
    seconds taken."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "kpi_pipeline"],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(scratch, filter="data")
        done = subprocess.run(
            [sys.executable, "-c", _BASELINE_RUN, str(stream), str(out), str(batch_size)],
            cwd=scratch,
            env={**os.environ, "PYTHONPATH": scratch},
            check=True,
            capture_output=True,
            text=True,
        )
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return float(timing["wall_s"]), float(timing["cpu_s"])


def output_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def profile_summary(profile: cProfile.Profile, top: int = 45) -> str:
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        text.write(f"\n==== sorted by {key} (top {top}) ====\n")
        stats.sort_stats(key).print_stats(top)
    return text.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep the stream and outputs here")
    parser.add_argument("--stream", type=Path, default=None, help="replay this stream instead")
    parser.add_argument("--baseline", default=None, help="git revision to compare outputs with")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile summary here")
    parser.add_argument(
        "--rounds", type=int, default=1, help="replay this many times (alternating with --baseline)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        if args.stream is not None:
            stream, leads, simulate_s = args.stream, None, 0.0
        else:
            stream = root / "stream.jsonl"
            leads, simulate_s = simulated_stream(stream, args.events, args.seed)

        started = time.perf_counter()
        parsed = read_events(stream)
        parse_s = time.perf_counter() - started

        profile = cProfile.Profile() if args.profile else None
        rounds: list[dict[str, float]] = []
        baseline: dict[str, object] = {}
        for _ in range(args.rounds):  # new, old, new, old...: paired under the same load
            started, cpu_started = time.perf_counter(), time.process_time()
            if profile is not None:
                profile.enable()
            result = replay(stream, root / "out", ports=replay_ports(), batch_size=args.batch_size)
            if profile is not None:
                profile.disable()
            pair = {"wall_s": time.perf_counter() - started}
            pair["cpu_s"] = time.process_time() - cpu_started
            if args.baseline is not None:
                pair["baseline_wall_s"], pair["baseline_cpu_s"] = baseline_replay(
                    args.baseline, stream, root / "baseline", args.batch_size
                )
                ours, theirs = output_files(root / "out"), output_files(root / "baseline")
                differ = sorted(
                    n for n in ours.keys() | theirs.keys() if ours.get(n) != theirs.get(n)
                )
                if differ:
                    raise SystemExit(f"outputs differ from {args.baseline}'s: {differ}")
                baseline["outputs_byte_identical"] = len(ours)
            rounds.append(pair)
        if profile is not None:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            args.profile.write_text(profile_summary(profile), encoding="utf-8")
        replay_s = statistics.median(p["wall_s"] for p in rounds)
        replay_cpu_s = statistics.median(p["cpu_s"] for p in rounds)
        if args.baseline is not None:
            base_s = statistics.median(p["baseline_wall_s"] for p in rounds)
            base_cpu_s = statistics.median(p["baseline_cpu_s"] for p in rounds)
            baseline |= {
                "baseline_rev": args.baseline,
                "baseline_replay_s": round(base_s, 2),
                "baseline_events_per_s": round(result.events / base_s),
                "baseline_replay_cpu_s": round(base_cpu_s, 2),
                "baseline_events_per_cpu_s": round(result.events / base_cpu_s),
            }
        if args.rounds > 1:  # every pair, in run order; the figures above are medians
            baseline["rounds"] = [{k: round(v, 2) for k, v in p.items()} for p in rounds]

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
            # Under a shared machine's load, CPU seconds of this process are steadier
            "replay_cpu_s": round(replay_cpu_s, 2),
            "events_per_cpu_s": round(result.events / replay_cpu_s),
            "stream_mib": round(stream.stat().st_size / 2**20, 1),
            "parsed_events": len(parsed),
            **baseline,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
