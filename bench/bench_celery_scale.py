"""KPI backfill throughput on Dagster's Celery executor with 1, 2 and 4 workers (DEPLOYMENT.md §4).

Per worker count: start that many ``dagster-celery worker start`` processes (one pool process
each) on this host, run ``kpi_backfill`` over ``--days`` days of a PostgreSQL ledger bulk-loaded
with synthetic lead facts (``bench_kpis.synthetic_lead_facts``), and report KPI partitions per
minute (days / run wall time, from Dagster's run record), the CPU seconds each worker's process
group used, and the machine's load average. The baseline is the same job with
KPI_EXECUTOR=in_process (every step in the run's own process).

Needs PostgreSQL (127.0.0.1:5432, trust), RabbitMQ (127.0.0.1:5672, guest/guest) and Redis
(127.0.0.1:6379), as the scale-out test does.

    python bench/bench_celery_scale.py --workers 1 2 4 --days 30 --leads-per-day 3000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from bench_kpis import PG_ADMIN_URL, START, _bulk_load_postgres, synthetic_lead_facts

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
BACKEND = "redis://127.0.0.1:6379/0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in the process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _start_worker(env: dict[str, str], prefix: str, name: str, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *(str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"),
                *("-y", str(REPO_ROOT / "deploy" / "celery_worker.yaml")),
                *("-q", f"{prefix}kpi,{prefix}resync", "-n", f"{prefix}{name}"),
                *("-i", "kpi_pipeline.definitions", "--", "--concurrency=1"),
                *("--without-mingle", "--without-gossip"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(logs: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.5)
    raise SystemExit(f"workers not ready after {timeout} s: see {logs}")


def _run_backfill(env: dict[str, str], work: Path, ledger_url: str, days: int, tag: str) -> float:
    """Runs kpi_backfill; returns the run's wall time (Dagster's run start to end)."""
    from dagster import DagsterInstance

    end = START + timedelta(days=days - 1)
    config = work / f"{tag}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "kpi_backfill_days": {
                        "config": {
                            "start": START.strftime("%Y-%m-%d"),
                            "end": end.strftime("%Y-%m-%d"),
                            "as_of": (end + timedelta(days=2)).isoformat(),
                        }
                    }
                },
                "resources": {
                    "pipeline": {
                        "config": {"ledger_url": ledger_url, "data_dir": str(work / f"data_{tag}")}
                    }
                },
            }
        )
    )
    subprocess.run(
        [
            *(str(BIN / "dagster"), "job", "execute", "-m", "kpi_pipeline.definitions"),
            *("-j", "kpi_backfill", "-c", str(config)),
        ],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    with DagsterInstance.get() as instance:
        [run] = instance.get_runs(limit=1)
        stats = instance.get_run_stats(run.run_id)
    return (
        stats.end_time - stats.launch_time
        if stats.launch_time
        else stats.end_time - stats.start_time
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--leads-per-day", type=int, default=3000)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_celery_"))
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = [f"bench_celery_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    instance_db, ledger_db = names
    ledger_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{ledger_db}"
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.celery.yaml", home / "dagster.yaml")
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_DB": instance_db,
        "KPI_CELERY_QUEUE_PREFIX": prefix,
        "DAGSTER_CELERY_BROKER_URL": BROKER,
        "DAGSTER_CELERY_BACKEND_URL": BACKEND,
        "KPI_DATA_DIR": str(work / "data"),
    }
    os.environ.update(
        {
            k: env[k]
            for k in (
                "DAGSTER_HOME",
                "DAGSTER_PG_USERNAME",
                "DAGSTER_PG_PASSWORD",
                "DAGSTER_PG_HOST",
                "DAGSTER_PG_DB",
            )
        }
    )
    try:
        from kpi_pipeline.adapters.ledger.store import Ledger

        frame = synthetic_lead_facts(args.leads_per_day * args.days, args.days)
        ledger = Ledger.from_url(ledger_url)
        _bulk_load_postgres(ledger.engine, frame)
        ledger.dispose()
        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"], env=env, check=True, capture_output=True
        )
        print(
            f"{len(frame):,} leads over {args.days} days; {os.cpu_count()} CPUs; "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )
        print(
            "| executor | workers | run wall time | KPI partitions/min | CPU s per worker | load avg (1 min) before → after |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        load = os.getloadavg()[0]
        seconds = _run_backfill(
            {**env, "KPI_EXECUTOR": "in_process"}, work, ledger_url, args.days, "inproc"
        )
        print(
            f"| in_process | (the run's process) | {seconds:.1f} s | {args.days / seconds * 60:.1f} "
            f"| - | {load:.1f} → {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
        for count in args.workers:
            logs = [work / f"w{count}_{i}.log" for i in range(count)]
            workers = [
                _start_worker({**env, "KPI_EXECUTOR": "celery"}, prefix, f"w{count}_{i}", log)
                for i, log in enumerate(logs)
            ]
            try:
                _wait_ready(logs)
                cpu_before = [_group_cpu_seconds(w.pid) for w in workers]
                load = os.getloadavg()[0]
                seconds = _run_backfill(
                    {**env, "KPI_EXECUTOR": "celery"}, work, ledger_url, args.days, f"c{count}"
                )
                cpu = [
                    _group_cpu_seconds(w.pid) - b for w, b in zip(workers, cpu_before, strict=True)
                ]
                print(
                    f"| celery | {count} | {seconds:.1f} s | {args.days / seconds * 60:.1f} "
                    f"| {', '.join(f'{c:.1f}' for c in cpu)} | {load:.1f} → {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
            finally:
                for worker in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(timeout=30)
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
