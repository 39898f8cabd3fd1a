"""Catch-up (issue 12): a backlog of ~100,000 change events through the live path (stream
mode) into a SQLite and a PostgreSQL ledger: events/s while catching up, and the time until
the p95 latencies of new activity are back under their targets.

Builds on ``bench_live.py`` (the ``make dev`` deployment under ``dagster dev`` in a scratch
directory, the user of the org over REST, the latency definitions) and on
``bench_live_scenarios.py`` (the operator's stop of the live path, rolling p95, timeline).
Per ledger backend:

1. start ``dagster dev`` in ``KPI_CDC_MODE=stream`` and wait until the seeded history is
   processed;
2. stop the live path as an operator would (``dagster sensor stop cdc_sensor``, Terminate
   of the ``cdc_stream`` run);
3. with the consumer stopped, write ``--events`` change events into the sandbox org: the
   sandbox's live simulation (``LiveSimulator``) at ``--events``/2 leads/h, fast-forwarded
   through the hour before the stop (its commit times are back-dated, so they count for
   throughput only, never for latency);
4. ``dagster sensor start cdc_sensor`` and, from then on, 1 lead/s over REST (each with its
   completed Task 3-6 s later), polled every ``--poll-ms``;
5. once every backlog event is processed, ``--post-seconds`` more of 1 lead/s.

Reports: events/s from the first backlog event staged to the last processed (and the peak
over 5 s), the time from ``sensor start`` until every rolling 10-s p95 of new activity is
back under the targets of issue 12 (CDC event commit -> staged < 0.5 s, first response
detected over REST < 1 s, assignment over REST < 5 s) and stays there, the latency tables,
load averages, CPU-seconds and peak RSS of the ``dagster dev`` process tree (the sandbox org
apart).

    python bench/bench_catchup.py                                    # both, 100,000 events
    python bench/bench_catchup.py --ledger sqlite --events 20000     # smaller, one backend
    python bench/bench_catchup.py --code /tmp/wt_other               # another worktree's code
    python bench/bench_catchup.py --ledger postgres --analyze-every 60    # autovacuum's ANALYZE
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_live as live
import bench_live_scenarios as scenarios
import sqlalchemy as sa

from kpi_pipeline.sandbox.simulator import LiveSimulator
from kpi_pipeline.sandbox.store import SandboxStore

# Issue 12's targets (seconds) for the rolling p95 of new activity after the restart.
TARGETS = {"cdc_wall": 0.5, "first_response": 1.0, "assignment": 5.0}
FILL_SPAN_S = 3600.0  # the backlog's commit times spread over the hour before the stop
FILL_STEP_S = 5.0  # simulated seconds per LiveSimulator step while filling


class TreeMemory:
    """Peak RSS of the ``dagster dev`` tree (sum over its processes, and the largest one),
    sampled every 2 s in a thread; the sandbox org apart."""

    def __init__(self, dep: live.Deployment) -> None:
        self.dep = dep
        self.peak_sum_mib = 0.0
        self.peak_one_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            dev, sandbox = self.dep.dev, getattr(self.dep, "sandbox", None)  # set by start()
            if dev is None:
                continue
            _, pids = live.tree_cpu(dev.pid, {sandbox} if sandbox else set())
            sizes = [rss_mib(pid) for pid in pids]
            self.peak_sum_mib = max(self.peak_sum_mib, sum(sizes))
            self.peak_one_mib = max([self.peak_one_mib, *sizes])

    def stop(self) -> None:
        self._stop.set()


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fill(dep: live.Deployment, events: int, seed: int) -> tuple[int, float]:
    """Write at least ``events`` change events into the stopped org; (written, seconds)."""
    store = SandboxStore(dep.data_dir / "sandbox.db")
    sim = LiveSimulator(store, seed=seed, leads_per_hour=events / 2.0, response_speedup=600.0)
    began = time.time()
    clock = began - FILL_SPAN_S
    written = 0
    try:
        while written < events:
            clock = min(clock + FILL_STEP_S, time.time())  # never a commit time in the future
            written += sim.step(int(clock * 1000))
            if clock >= time.time() - 1:
                time.sleep(0.2)  # the fast-forward is used up: real time from here
    finally:
        store.close()
    return written, time.time() - began


def ledger_value(ledger_url: str, sql: str) -> Any:
    """The one value ``sql`` reads from the ledger database."""
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


def inbox_count(ledger_url: str) -> int:
    return ledger_value(ledger_url, "select count(*) from cdc_inbox")


class Analyzer:
    """``ANALYZE`` of the PostgreSQL ledger at once and then every ``every`` seconds, in a
    thread: what autovacuum does on a server that runs it (a live ledger has statistics;
    autovacuum looks every ``autovacuum_naptime``, 60 s by default). Some servers run
    without it, as the one of the machine these figures were taken on: there the planner
    never learns that one channel or object is a third of a table, and its keyed reads scan
    the whole channel (bench/RESULTS.md, Catch-up)."""

    def __init__(self, ledger_url: str, every: float) -> None:
        self.ledger_url, self.every, self.runs = ledger_url, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        engine = sa.create_engine(self.ledger_url, isolation_level="AUTOCOMMIT")
        try:
            while True:
                with engine.connect() as conn:
                    conn.execute(sa.text("ANALYZE"))
                self.runs += 1
                if self._stop.wait(self.every):
                    return
        finally:
            engine.dispose()

    def stop(self) -> None:
        self._stop.set()


def wait_caught_up(dep: live.Deployment, staged_target: int, timeout: float) -> bool:
    """Until the ledger's inbox holds ``staged_target`` events and no batch is pending."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if inbox_count(dep.ledger_url) >= staged_target and live.backlog(dep.ledger_url) == 0:
            return True
        time.sleep(2.0)
    return False


def back_under(rolling: list[tuple[float, dict[str, float | None]]], after: float) -> float | None:
    """The commit time from which every later 10-s window meets all of ``TARGETS`` (None if
    the last window still misses)."""
    last_miss = None
    for s, row in rolling:
        if s < after:
            continue
        for key, target in TARGETS.items():
            value = row[key]
            if value is not None and value >= target:
                last_miss = s
    if last_miss is None:
        return after
    return None if rolling and last_miss >= rolling[-1][0] else last_miss


def run_one(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    dep = live.Deployment(
        workdir / backend, "stream", postgres=backend == "postgres", code_root=Path(args.code).resolve(),
        org_update_delay_s=args.org_update_delay,
    )  # fmt: skip
    loads = live.LoadSampler()
    memory = TreeMemory(dep)
    analyzer: Analyzer | None = None
    try:
        dep.start(args.ready_timeout)
        time.sleep(args.warmup)
        t_stop_cmd = time.time()
        stopped = scenarios.stop_live_path(dep)
        t_stop = time.time()
        staged_before = inbox_count(dep.ledger_url)
        written, fill_s = fill(dep, args.events, args.sim_seed)
        print(f"{backend}: {written:,} change events written into the stopped org in {fill_s:.0f} s", flush=True)  # fmt: skip

        if backend == "postgres":
            print(f"{backend}: the server's autovacuum is {ledger_value(dep.ledger_url, 'SHOW autovacuum')}; `ANALYZE` "
                  + (f"every {args.analyze_every:g} s from `sensor start`" if args.analyze_every else "never"), flush=True)  # fmt: skip
            if args.analyze_every:
                analyzer = Analyzer(dep.ledger_url, args.analyze_every)
        t_restart_cmd = time.time()
        dep.dagster_cli("sensor", "start", "cdc_sensor", "-w", "workspace.yaml")
        t_restart = time.time()
        cost = live.CostWindow(dep).begin()
        user, threads = live.start_user(dep, 1.0, args.poll_ms)
        caught = wait_caught_up(dep, staged_before + written, args.catchup_timeout)
        t_caught = time.time()
        print(f"{backend}: {'caught up' if caught else 'NOT caught up'} {t_caught - t_restart_cmd:.0f} s after `sensor start`", flush=True)  # fmt: skip
        time.sleep(args.post_seconds)
        t_end = time.time()
        cost.end()
        c, fig = live.drain_and_measure(dep, user, threads, args.drain_seconds, cost)
    finally:
        if analyzer is not None:
            analyzer.stop()
        memory.stop()
        loads.stop()
        dep.stop()
    report(backend, dep, c, fig, loads, memory, stopped, t_stop_cmd, t_stop, t_restart_cmd, t_restart, t_end, written)  # fmt: skip


def report(
    backend: str,
    dep: live.Deployment,
    c: live.Collected,
    fig: dict,
    loads: live.LoadSampler,
    memory: TreeMemory,
    stopped: str,
    t_stop_cmd: float,
    t_stop: float,
    t_restart_cmd: float,
    t_restart: float,
    t_end: float,
    written: int,
) -> None:
    scenarios.header(dep, loads, t_restart, t_end, f"Catch-up, {backend} ledger")
    print(f"stopped ({stopped}) in {t_stop - t_stop_cmd:.1f} s; load while filling {loads.between(t_stop, t_restart_cmd)}, "
          f"catch-up and after {loads.between(t_restart, t_end)}")  # fmt: skip
    if c.obs.errors:
        print(f"REST errors: {len(c.obs.errors)}, first: {c.obs.errors[0]}")
    done = scenarios.processed_times(c)
    staged = c.ledger["staged"]
    before = [r for r, s in staged.items() if s is not None and s < t_stop * 1000]
    first_backlog = max(before) + 1 if before else 0
    backlog = [r for r, _, _, ts, _, _ in c.changes if r >= first_backlog and ts <= t_restart * 1000]  # fmt: skip
    unprocessed = [r for r in backlog if r not in done]
    caught_up_at = max((done[r] for r in backlog if r in done), default=None)
    first_staged = min((staged[r] for r in backlog if staged.get(r)), default=None)
    rolling = scenarios.rolling_p95(c.samples(t_restart, t_end), t_restart, t_end)
    back = back_under(rolling, t_restart)

    print("\n| catch-up | value |")
    print("| --- | --- |")
    print(f"| change events in the backlog (replay {first_backlog}.., {written:,} written by the fill) | {len(backlog):,} |")  # fmt: skip
    print(f"| backlog events not processed by the end | {len(unprocessed):,} |")
    if caught_up_at is not None and first_staged is not None:
        work = (caught_up_at - first_staged) / 1000
        print(f"| `sensor start` -> first backlog event staged | {first_staged / 1000 - t_restart_cmd:.1f} s |")  # fmt: skip
        print(f"| `sensor start` -> last backlog event processed (caught up) | {caught_up_at / 1000 - t_restart_cmd:.1f} s |")  # fmt: skip
        print(f"| events/s while catching up (first staged -> last processed) | {len(backlog) / max(work, 1e-9):.0f} |")  # fmt: skip
        print(f"| events processed/s, peak 5 s | {scenarios.peak_rate(list(done.values()), first_staged / 1000, caught_up_at / 1000):.0f} |")  # fmt: skip
    targets = ", ".join(f"{k} < {v:g} s" for k, v in TARGETS.items())
    if back is None:
        print(f"| rolling 10-s p95 of new activity back under ({targets}) | NOT by the end |")
    else:
        print(f"| `sensor start` -> rolling 10-s p95 of new activity back under ({targets}) for good | {back - t_restart_cmd:.0f} s |")  # fmt: skip
    print(f"| CPU-seconds, dagster dev tree, restart -> end ({fig['window']:.0f} s) | {fig['cpu']:.1f} s |")  # fmt: skip
    print(f"| peak RSS, dagster dev tree (sum / largest process) | {memory.peak_sum_mib:.0f} / {memory.peak_one_mib:.0f} MiB |")  # fmt: skip
    live.print_latency(c, t_restart, t_end, f"new activity after the restart ({t_end - t_restart:.0f} s at 1 lead/s)")  # fmt: skip
    if caught_up_at is not None:
        live.print_latency(c, caught_up_at / 1000, t_end, "new activity committed after the backlog was processed")  # fmt: skip
    scenarios.print_timeline(c, rolling, t_restart_cmd, every=args_every(rolling))
    print("(t_ref = `dagster sensor start cdc_sensor`)", flush=True)


def args_every(rolling: list[tuple[float, dict[str, float | None]]]) -> float:
    """A timeline row every 10 s, or fewer rows (at most ~60) for a long catch-up."""
    span = rolling[-1][0] - rolling[0][0] if rolling else 0.0
    return max(10.0, round(span / 60.0, -1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ledger", action="append", choices=["sqlite", "postgres"], default=[])
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (change events)")
    parser.add_argument("--code", default=str(live.REPO_ROOT), help="repository or worktree to run")
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--catchup-timeout", type=float, default=3600.0)
    parser.add_argument("--post-seconds", type=float, default=120.0)
    parser.add_argument("--drain-seconds", type=float, default=60.0)
    parser.add_argument("--sim-seed", type=int, default=12)
    parser.add_argument(
        "--analyze-every", type=float, default=0.0, metavar="S",
        help="PostgreSQL: ANALYZE the ledger at sensor start and every S s (autovacuum's part)",
    )  # fmt: skip
    parser.add_argument(
        "--org-update-delay", type=float, default=0.0, help=live.ORG_UPDATE_DELAY_HELP
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    live.exit_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench_catchup_"))
    print(f"uptime at start: {live.uptime()}", flush=True)
    try:
        for backend in args.ledger or ["sqlite", "postgres"]:
            run_one(backend, args, workdir)
    finally:
        print(f"uptime at end: {live.uptime()}")
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
