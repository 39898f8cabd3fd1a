"""Sensor-mode lead partitions: one simulated stream processed by 1, 2 and 4 partition
workers in separate processes on one PostgreSQL ledger.

Each worker does what a partitioned ``process_cdc_batch`` run does to the ledger, round after
round (``--round`` events a round, a barrier between rounds as the sensor's sequential rounds):
take the partition's lease, keep the partition's events (``core.lead_partitions`` with the
stored links), ``BatchProcessor.process`` them (the packaged policy, the local ranker, the
event clock), record the completion, give the lease back. No Dagster: this measures the ledger
work and the partition filter, not run launches. Reported per configuration: wall seconds,
events/s, and CPU seconds (``time.process_time``) of each worker, of the filter alone, and
summed. Configurations alternate (1, 2, 4, 1, 2, 4 ...) for ``--repeat`` passes so load from
other processes on the machine hits each alike; ``uptime`` is printed before and after.

    python bench/bench_lead_partitions.py [--events 20000] [--round 2000] [--repeat 2]
                                         [--workers 1,2,4] [--stream FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from bench_kpis import PG_ADMIN_URL
from bench_replay import simulated_stream

SPAWN = multiprocessing.get_context("spawn")


def _worker(url: str, partition: int, partitions: int, path: str, size: int, barrier, out) -> None:
    from kpi_pipeline.adapters.ledger import Ledger
    from kpi_pipeline.adapters.ledger import partitions as lp
    from kpi_pipeline.app.replay import replay_processor
    from kpi_pipeline.config import get_settings
    from kpi_pipeline.core.events import read_recorded_lines
    from kpi_pipeline.core.lead_partitions import LeadResolver, events_of_partition
    from kpi_pipeline.core.policy.load import load_policy

    settings = get_settings()
    with open(path, encoding="utf-8") as handle:
        events = list(read_recorded_lines(handle))
    rounds = [events[start : start + size] for start in range(0, len(events), size)]
    ledger = Ledger.from_url(url)
    processor = replay_processor(ledger, load_policy(settings.policy_file), settings.client_id)
    holder, ttl = f"bench-{partition}", timedelta(minutes=30)
    cpu = filter_cpu = 0.0
    kept = 0
    barrier.wait(timeout=600)
    started = time.perf_counter()
    for number, batch in enumerate(rounds):
        cpu_start = time.process_time()
        lp.acquire_partition(ledger, partition, partitions, holder=holder, ttl=ttl)
        key = lp.round_key([f"round-{number}"], partitions)
        resolver = LeadResolver.of(batch, lp.round_links(ledger, key, batch))
        mine = events_of_partition(batch, partition, partitions, resolver)
        filter_cpu += time.process_time() - cpu_start
        processor.process(mine)
        lp.complete_partition(ledger, [f"round-{number}"], partition, partitions, run_id=holder)
        lp.release_partition(ledger, partition, holder=holder)
        cpu += time.process_time() - cpu_start
        kept += len(mine)
        barrier.wait(timeout=600)
    out.put((partition, time.perf_counter() - started, cpu, filter_cpu, kept))
    ledger.dispose()


def run(stream: Path, workers: int, size: int) -> dict:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"kpi_bench_part_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        from kpi_pipeline.adapters.ledger import Ledger

        Ledger.from_url(url).dispose()
        barrier, out = SPAWN.Barrier(workers), SPAWN.Queue()
        procs = [
            SPAWN.Process(target=_worker, args=(url, p, workers, str(stream), size, barrier, out))
            for p in range(workers)
        ]
        for proc in procs:
            proc.start()
        results = sorted(out.get(timeout=3600) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
            if proc.exitcode != 0:
                raise SystemExit(f"worker exited with {proc.exitcode}")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    wall = max(r[1] for r in results)
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "events": sum(r[4] for r in results),
        "events_per_s": round(sum(r[4] for r in results) / wall, 1),
        "cpu_s_per_worker": [round(r[2], 2) for r in results],
        "filter_cpu_s_per_worker": [round(r[3], 3) for r in results],
        "cpu_s_total": round(sum(r[2] for r in results), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--round", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--stream", type=Path)
    args = parser.parse_args(argv)
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    with tempfile.TemporaryDirectory(prefix="bench-partitions-") as scratch:
        stream = args.stream or Path(scratch) / "stream.jsonl"
        if args.stream is None:
            simulated_stream(stream, args.events, args.seed)
        for _ in range(args.repeat):
            for workers in (int(w) for w in args.workers.split(",")):
                print(run(stream, workers, args.round), flush=True)
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
