"""Burst, backlog and side-by-side cost of the live path under `dagster dev` (issue 8).

Builds on ``bench_live.py`` (same ``make dev`` deployment in a scratch directory, same user
of the org over REST, same latency definitions and cost accounting); only the scenario
differs. Three sub-commands:

* ``burst``: stream mode; 1 lead/s (each with its completed Task 3-6 s later) for
  ``--pre-seconds``, then ``--burst-rate`` leads/s for ``--burst-seconds``, then 1 lead/s for
  ``--post-seconds``. Reports latency per phase, a 10-s rolling p95 timeline, the time from
  the burst's end until every rolling p95 is back under its target, and the events/s
  committed and processed.
* ``backlog``: stream mode; 1 lead/s for ``--pre-seconds``, then the operator stops the live
  path (``dagster sensor stop cdc_sensor`` and Terminate of the ``cdc_stream`` run, what the
  UI's buttons do) while ``--backlog-minutes`` of activity is written to the org faster than
  real time (see ``Outage``), then ``dagster sensor start cdc_sensor`` and 1 lead/s for
  ``--post-seconds``. Reports the time to catch up, the events/s while catching up and the
  time back to the p95 targets.
* ``cost``: one deployment after another in one invocation, each ``MODE:CODE_DIR:RATES``
  (e.g. ``stream:/tmp/wt_new:1,10``); for each rate a ``--seconds`` window at that REST lead
  rate (rates follow each other in one deployment without a restart). Reports CPU-seconds
  per 1,000 events and Dagster runs per hour side by side, with ratios against the last
  configuration (the baseline).

    python bench/bench_live_scenarios.py burst
    python bench/bench_live_scenarios.py backlog --backlog-minutes 30 --outage-seconds 180
    python bench/bench_live_scenarios.py cost --seconds 240 \\
        --config stream:/tmp/wt_new:1,10 --config sensor:/tmp/wt_new:1 \\
        --config sensor:/tmp/wt_6ca71b7:1
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_live as live
import sqlalchemy as sa

from kpi_pipeline.sandbox.simulator import LiveSimulator
from kpi_pipeline.sandbox.store import SandboxStore

ROLLING_S = 10.0  # rolling p95 window (by commit time)
# The rolling criterion: CDC over changes committed at wall-clock time (our creates and the
# pipeline's echoes; see bench_live.WALL_CLOCK_CLIENTS), assignment, first response. The
# timeline also shows CDC over every change, the simulator's back-dated ones included.
MEASURES = ("cdc_wall", "assignment", "first_response")
ALL_MEASURES = ("cdc", *MEASURES)


def pct(values: list[float], q: float) -> float:
    return live.common.pct(values, q)


def rolling_p95(
    samples: dict[str, list[tuple[float, float | None]]], start: float, end: float
) -> list[tuple[float, dict[str, float | None]]]:
    """(s, {measure: p95 of what was committed in [s - 10 s, s)}) every second from start to
    end (epoch seconds); a value never seen counts as infinitely late."""
    out = []
    s = start + ROLLING_S
    while s <= end:
        row: dict[str, float | None] = {}
        for key in ALL_MEASURES:
            values = [
                float("inf") if v is None else v
                for ts, v in samples[key]
                if (s - ROLLING_S) * 1000 <= ts < s * 1000
            ]
            row[key] = pct(values, 0.95) if values else None
        out.append((s, row))
        s += 1.0
    return out


def back_under_targets(
    rolling: list[tuple[float, dict[str, float | None]]],
    after: float,
    measures: tuple[str, ...] = MEASURES,
) -> tuple[float | None, float]:
    """(commit time from which every later 10-s window meets the three p95 targets, or None
    if the last window still misses; the worst rolling p95 ratio to its target after
    ``after``)."""
    last_miss = None
    worst = 0.0
    for s, row in rolling:
        if s < after:
            continue
        for key in measures:
            value = row[key]
            if value is not None:
                worst = max(worst, value / live.TARGETS[key])
                if value >= live.TARGETS[key]:
                    last_miss = s
    if last_miss is None:
        return after, worst
    if rolling and last_miss >= rolling[-1][0]:
        return None, worst
    return last_miss, worst


def processed_times(c: live.Collected) -> dict[int, float]:
    """replay -> when its batch was completed (ms)."""
    ledger = c.ledger
    return {
        r: ledger["completed"][b]
        for r, b in ledger["batch"].items()
        if ledger["completed"].get(b) is not None
    }


def batch_sizes(c: live.Collected, t0: float, t1: float) -> str:
    """Events per batch for the batches whose first event was staged in [t0, t1]."""
    sizes: dict[str, int] = {}
    first: dict[str, float] = {}
    for r, b in c.ledger["batch"].items():
        sizes[b] = sizes.get(b, 0) + 1
        staged = c.ledger["staged"].get(r)
        if staged is not None:
            first[b] = min(first.get(b, staged), staged)
    chosen = [sizes[b] for b, t in first.items() if t0 * 1000 <= t < t1 * 1000]
    if not chosen:
        return "-"
    return f"{sum(chosen) / len(chosen):.1f}, {max(chosen)}, {len(chosen)}"


def rate(times_ms: list[float], t0: float, t1: float) -> float:
    n = sum(1 for t in times_ms if t0 * 1000 <= t < t1 * 1000)
    return n / max(t1 - t0, 1e-9)


def peak_rate(times_ms: list[float], t0: float, t1: float, width: float = 5.0) -> float:
    if t1 - t0 < width:
        return rate(times_ms, t0, t1 + 1e-3)
    best, s = 0.0, t0
    while s + width <= t1 + 1e-9:
        best = max(best, rate(times_ms, s, s + width))
        s += 1.0
    return best


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "never seen" if value == float("inf") else f"{value:.3f}"


def print_timeline(
    c: live.Collected,
    rolling: list[tuple[float, dict[str, float | None]]],
    origin: float,
    every: float = 10.0,
) -> None:
    """The rolling p95 every ``every`` s, with events committed and processed per second."""
    committed = [ts for _, _, _, ts, _, _ in c.changes]
    processed = list(processed_times(c).values())
    print(
        "\n| commit time - t_ref (s) | rolling 10-s p95 CDC (our creates + echoes) | CDC (every "
        "change) | assignment | first response | events committed/s (10 s) | events processed/s (10 s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    next_row = None
    for s, row in rolling:
        if next_row is None:
            next_row = s
        if s + 1e-9 < next_row:
            continue
        next_row = s + every
        print(
            f"| {s - origin:+.0f} | {fmt(row['cdc_wall'])} | {fmt(row['cdc'])} | {fmt(row['assignment'])} | "
            f"{fmt(row['first_response'])} | {rate(committed, s - ROLLING_S, s):.1f} | "
            f"{rate(processed, s - ROLLING_S, s):.1f} |"
        )


def header(dep: live.Deployment, loads: live.LoadSampler, t0: float, t1: float, what: str) -> None:
    print(
        f"\n{what}: stream mode ({'PostgreSQL' if dep.postgres else 'SQLite'}), code at "
        f"{dep.version}; load average (1 min, every 5 s) {loads.between(t0, t1)}; "
        f"uptime now: {live.uptime()}"
    )


def start_steady(
    dep: live.Deployment, args: argparse.Namespace
) -> tuple[float, live.OrgUser, list[threading.Thread]]:
    """Start the deployment, warm up, then create 1 lead/s for --pre-seconds: (when the
    leads began, the user, its threads)."""
    dep.start(args.ready_timeout)
    time.sleep(args.warmup)
    t_start = time.time()
    user, threads = live.start_user(dep, 1.0, args.poll_ms)
    time.sleep(args.pre_seconds)
    return t_start, user, threads


def print_all_changes_and_worst(back_s: float | None, worst: float, worst_from: str) -> None:
    """Two rows of both scenarios' tables: when the rolling p95 with CDC over every change was
    back under all three targets (seconds from the scenario's reference; None: not by the
    end), and the worst rolling p95 relative to its target."""
    back = "NOT by the end" if back_s is None else f"{back_s:.0f} s"
    print(f"| the same with CDC over every change (simulator's back-dated commits included) | {back} |")  # fmt: skip
    print(f"| worst rolling 10-s p95 / its target, {worst_from} | {worst:.2f} |")


# --- burst --------------------------------------------------------------------------------------


def burst(args: argparse.Namespace, workdir: Path) -> int:
    dep = live.Deployment(workdir, "stream", code_root=Path(args.code).resolve())
    loads = live.LoadSampler()
    try:
        t_start, user, threads = start_steady(dep, args)
        b0 = time.time()
        cost = live.CostWindow(dep).begin()
        user.lead_rate = args.burst_rate
        time.sleep(args.burst_seconds)
        user.lead_rate = 1.0
        b1 = time.time()
        cost.end()
        time.sleep(args.post_seconds)
        user.stop_creating.set()
        t_end = time.time()
        c, fig = live.drain_and_measure(dep, user, threads, args.drain_seconds, cost)
    finally:
        loads.stop()
        dep.stop()

    header(dep, loads, t_start, t_end, "Burst")
    print(
        f"1 lead/s from {0:.0f} s, {args.burst_rate:g} leads/s from {b0 - t_start:.0f} s to "
        f"{b1 - t_start:.0f} s, 1 lead/s until {t_end - t_start:.0f} s; load during the burst "
        f"{loads.between(b0, b1)}"
    )
    if user.obs.errors:
        print(f"REST errors: {len(user.obs.errors)}, first: {user.obs.errors[0]}")
    leads_in_burst = len(c.leads(b0, b1))
    print(
        f"leads committed during the burst: {leads_in_burst} "
        f"({leads_in_burst / (b1 - b0):.2f}/s reached)"
    )
    live.print_latency(c, t_start, b0, f"before the burst, {b0 - t_start:.0f} s at 1 lead/s")
    live.print_latency(c, b0, b1, f"during the burst, {b1 - b0:.0f} s at {args.burst_rate:g} leads/s")  # fmt: skip
    live.print_latency(c, b1, t_end, f"after the burst, {t_end - b1:.0f} s at 1 lead/s")
    samples = c.samples(t_start, t_end)
    rolling = rolling_p95(samples, t_start, t_end)
    back, worst = back_under_targets(rolling, b0)
    back_all, _ = back_under_targets(rolling, b0, ("cdc", "assignment", "first_response"))
    committed = [ts for _, _, _, ts, _, _ in c.changes]
    processed = list(processed_times(c).values())
    print("\n| burst | value |")
    print("| --- | --- |")
    if back is None:
        print("| rolling p95 back under all three targets after the burst's end | NOT by the end |")
    else:
        print(f"| rolling p95 back under all three targets after the burst's end | {max(0.0, back - b1):.0f} s (commit time) |")  # fmt: skip
    all_back = None if back_all is None else max(0.0, back_all - b1)
    print_all_changes_and_worst(all_back, worst, "from the burst's start")
    print(f"| events committed/s during the burst (mean; peak 5 s) | {rate(committed, b0, b1):.1f}; {peak_rate(committed, b0, b1):.1f} |")  # fmt: skip
    print(f"| events processed/s during the burst (mean; peak 5 s) | {rate(processed, b0, b1):.1f}; {peak_rate(processed, b0, b1):.1f} |")  # fmt: skip
    for label, lo, hi in (("before", t_start, b0), ("during", b0, b1), ("after", b1, t_end)):
        print(f"| events per staged batch (one FetchResponse), batches staged {label} the burst: mean, max, n | {batch_sizes(c, lo, hi)} |")  # fmt: skip
    print(f"| CPU-seconds, dagster dev tree, during the burst | {fig['cpu']:.1f} s ({fig['cpu'] / fig['window'] * 100:.0f}% of a core) |")  # fmt: skip
    print(f"| CPU-seconds per 1,000 events during the burst | {fig['cpu_per_1000']:.1f} s |")
    print(f"| Dagster runs created during the burst | {sum(fig['runs'].values())} {fig['runs']} |")  # fmt: skip
    print_timeline(c, rolling, b0)
    print("(t_ref = the burst's start)")
    return 0


# --- backlog ------------------------------------------------------------------------------------


class Outage:
    """While the live path is stopped: ``minutes`` of the default workload, written in
    ``seconds`` of wall-clock time.

    * REST: ``minutes`` x 60 leads (the 1 lead/s workload), each with its completed Task
      3-6 s later, at ``minutes`` x 60 / ``seconds`` leads/s (the user's create threads;
      commit times are the wall clock of the outage);
    * simulation: ``minutes`` of the sandbox's default live simulation (``LiveSimulator``,
      120 leads/h, response speed-up 600, its own seed), written into the sandbox store from
      this process; its clock runs from ``minutes`` before the stop to the restart, faster
      than real time, so its commit times are spread over the ``minutes`` + ``seconds``
      before the restart (the simulator never writes a commit time in the future);
    * the sandbox's own live simulation keeps running in real time as always.
    """

    def __init__(self, dep: live.Deployment, minutes: float, seconds: float, seed: int) -> None:
        self.store = SandboxStore(dep.data_dir / "sandbox.db")
        self.sim = LiveSimulator(
            self.store, seed=seed, leads_per_hour=120.0, response_speedup=600.0
        )
        self.minutes, self.seconds = minutes, seconds
        self.written = 0
        self.stop = threading.Event()

    def run(self, t_stop: float) -> None:
        span = self.minutes * 60.0
        while True:
            now = time.time()
            clock = t_stop - span + (now - t_stop) * (1.0 + span / self.seconds)
            self.written += self.sim.step(int(min(clock, now) * 1000))
            if self.stop.is_set():
                return
            time.sleep(0.2)


def leases_held(ledger_url: str) -> int:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select expires_at from cdc_channel_leases")).all()
    finally:
        engine.dispose()
    now = time.time()
    return sum(1 for (expires,) in rows if live.common._dt(expires).timestamp() > now)


def stop_live_path(dep: live.Deployment) -> str:
    """As an operator would: stop cdc_sensor (else it starts the next generation), then
    Terminate the cdc_stream run (the UI's button: GraphQL terminateRun)."""
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

    dep.dagster_cli("sensor", "stop", "cdc_sensor", "-w", "workspace.yaml")
    running = [
        r.dagster_run.run_id
        for r in dep.runs()
        if r.dagster_run.job_name == "cdc_stream"
        and r.dagster_run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)
    ]
    client = DagsterGraphQLClient("127.0.0.1", port_number=dep.port)
    for run_id in running:
        print(f"terminate cdc_stream run {run_id} (GraphQL terminateRun, the UI's Terminate)")
        client.terminate_run(run_id)
    deadline = time.time() + 60
    while time.time() < deadline:
        statuses = [dep.instance.get_run_by_id(r).status for r in running]
        if all(s in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS) for s in statuses) and not leases_held(dep.ledger_url):  # fmt: skip
            return f"{', '.join(running)}: {[s.value for s in statuses]}"
        time.sleep(0.5)
    raise SystemExit("the cdc_stream run did not end within 60 s of Terminate")


def backlog(args: argparse.Namespace, workdir: Path) -> int:
    dep = live.Deployment(workdir, "stream", code_root=Path(args.code).resolve())
    loads = live.LoadSampler()
    outage_rate = args.backlog_minutes * 60.0 / args.outage_seconds
    try:
        t_start, user, threads = start_steady(dep, args)

        t_stop_cmd = time.time()
        stopped = stop_live_path(dep)
        t_stop = time.time()
        # Nothing can change in the org while stopped: no polling (it would only load the
        # machine); it resumes at the restart.
        user.stop_polling.set()
        threads[2].join()
        outage = Outage(dep, args.backlog_minutes, args.outage_seconds, seed=args.sim_seed)
        sim_thread = threading.Thread(target=outage.run, args=(t_stop,), daemon=True)
        sim_thread.start()
        user.lead_rate = outage_rate
        time.sleep(args.outage_seconds)
        user.lead_rate = 1.0
        outage.stop.set()
        sim_thread.join()
        outage.store.close()

        # Restart; the live poller covers the leads created from now on, a second one (1 s)
        # the backlog's.
        t_restart_cmd = time.time()
        dep.dagster_cli("sensor", "start", "cdc_sensor", "-w", "workspace.yaml")
        t_restart = time.time()
        user.stop_polling.clear()
        pollers = [
            threading.Thread(
                target=user.poll_loop, args=(args.poll_ms / 1000.0, t_restart * 1000), daemon=True
            ),
            threading.Thread(target=user.poll_loop, args=(1.0,), daemon=True),
        ]
        for t in pollers:
            t.start()
        threads[2:] = pollers
        cost = live.CostWindow(dep).begin()
        time.sleep(args.post_seconds)
        user.stop_creating.set()
        t_end = time.time()
        cost.end()
        c, fig = live.drain_and_measure(dep, user, threads, args.drain_seconds, cost)
        stream_runs = sorted(
            (r.create_timestamp.timestamp(), r.start_time, r.dagster_run.run_id)
            for r in dep.runs()
            if r.dagster_run.job_name == "cdc_stream"
        )
    finally:
        loads.stop()
        dep.stop()

    header(dep, loads, t_start, t_end, "Backlog")
    print(f"stopped at {t_stop_cmd - t_start:.0f} s ({stopped}), the stop took {t_stop - t_stop_cmd:.1f} s; "
          f"outage {args.outage_seconds:g} s with {args.backlog_minutes:g} min of activity "
          f"({outage_rate:g} REST leads/s + Tasks, {outage.written} change events of fast-forwarded "
          f"live simulation); `dagster sensor start` at {t_restart_cmd - t_start:.0f} s "
          f"(returned after {t_restart - t_restart_cmd:.1f} s); load during the outage "
          f"{loads.between(t_stop, t_restart)}, during catch-up and after {loads.between(t_restart, t_end)}")  # fmt: skip
    if user.obs.errors:
        print(f"REST errors: {len(user.obs.errors)}, first: {user.obs.errors[0]}")
    after = [r for r in stream_runs if r[0] >= t_restart_cmd - 1]
    if after:
        created, started, run_id = after[0]
        print(f"new cdc_stream run {run_id}: created {created - t_restart_cmd:.1f} s, started "
              f"{(started or float('nan')) - t_restart_cmd:.1f} s after `sensor start`")  # fmt: skip

    done = processed_times(c)
    # The backlog: every change event whose replay is after the last one staged before the stop
    # and that was committed before the restart.
    staged_before = [r for r, s in c.ledger["staged"].items() if s is not None and s < t_stop * 1000]  # fmt: skip
    first_backlog = max(staged_before) + 1 if staged_before else 0
    backlog_replays = [
        r for r, _, _, ts, _, _ in c.changes if r >= first_backlog and ts <= t_restart * 1000
    ]  # fmt: skip
    last_replay_before_restart = max(backlog_replays, default=None)
    unprocessed = [r for r in backlog_replays if r not in done]
    caught_up_at = max((done[r] for r in backlog_replays if r in done), default=None)
    first_staged = min(
        (c.ledger["staged"][r] for r in backlog_replays if c.ledger["staged"].get(r)), default=None
    )
    processed_all = list(done.values())
    backlog_leads = c.leads(t_stop, t_restart)
    seen_all = [
        max(
            c.obs.assigned_seen.get(lead, float("inf")), c.obs.response_seen.get(lead, float("inf"))
        )
        for lead in backlog_leads
    ]
    samples = c.samples(t_restart, t_end)
    rolling = rolling_p95(samples, t_restart, t_end)
    back, worst = back_under_targets(rolling, t_restart)
    back_all, _ = back_under_targets(rolling, t_restart, ("cdc", "assignment", "first_response"))

    print("\n| backlog | value |")
    print("| --- | --- |")
    print(f"| change events in the backlog (committed while stopped, replay {first_backlog}..{last_replay_before_restart}) | {len(backlog_replays)} |")  # fmt: skip
    print(f"| of them REST leads / their Tasks | {len(backlog_leads)} / {sum(1 for x in backlog_leads if x in c.obs.task_of)} |")  # fmt: skip
    print(f"| backlog events not processed by the end | {len(unprocessed)} |")
    if caught_up_at is not None and first_staged is not None:
        span = caught_up_at / 1000 - t_restart_cmd
        work = (caught_up_at - first_staged) / 1000
        print(f"| `sensor start` -> first backlog event staged | {first_staged / 1000 - t_restart_cmd:.1f} s |")  # fmt: skip
        print(f"| `sensor start` -> last backlog event processed (caught up, ledger) | {span:.1f} s |")  # fmt: skip
        print(f"| events/s while catching up (backlog events / first staged -> last processed) | {len(backlog_replays) / max(work, 1e-9):.0f} |")  # fmt: skip
        print(f"| events processed/s, peak 5 s | {peak_rate(processed_all, first_staged / 1000, caught_up_at / 1000):.0f} |")  # fmt: skip
    if seen_all and max(seen_all) < float("inf"):
        print(f"| `sensor start` -> every backlog lead's owner and first response readable over REST (1-s poll) | {max(seen_all) / 1000 - t_restart_cmd:.1f} s |")  # fmt: skip
    else:
        missing = sum(1 for v in seen_all if v == float("inf"))
        print(f"| backlog leads not assigned or answered by the end | {missing} of {len(seen_all)} |")  # fmt: skip
    if back is None:
        print("| rolling p95 of new activity back under all three targets | NOT by the end |")
    else:
        print(f"| `sensor start` -> rolling p95 of new activity back under all three targets (commit time) | {back - t_restart_cmd:.0f} s |")  # fmt: skip
    all_back = None if back_all is None else back_all - t_restart_cmd
    print_all_changes_and_worst(all_back, worst, "after the restart")
    print(f"| CPU-seconds, dagster dev tree, restart -> end ({fig['window']:.0f} s) | {fig['cpu']:.1f} s |")  # fmt: skip
    print(f"| Dagster runs created, restart -> end | {sum(fig['runs'].values())} {fig['runs']} |")

    # The fast-forwarded simulation's commit times lie before the stop: leave the backlog out.
    before = live.Collected(c.obs, c.ledger, [ch for ch in c.changes if ch[0] < first_backlog])
    live.print_latency(before, t_start, t_stop_cmd - 10, "before the stop, 1 lead/s (to 10 s before it)")  # fmt: skip
    live.print_latency(c, t_restart, t_end, f"new activity after the restart ({t_end - t_restart:.0f} s at 1 lead/s)")  # fmt: skip
    if caught_up_at is not None:
        live.print_latency(c, caught_up_at / 1000, t_end, "new activity committed after the backlog was processed")  # fmt: skip
    print_timeline(c, rolling, t_restart_cmd)
    print("(t_ref = `dagster sensor start cdc_sensor`)")
    return 0


# --- cost ---------------------------------------------------------------------------------------


def parse_config(text: str) -> tuple[str, Path, list[float]]:
    mode, code, rates = text.split(":")
    if mode not in ("stream", "sensor"):
        raise argparse.ArgumentTypeError(f"mode must be stream or sensor, not {mode!r}")
    return mode, Path(code).resolve(), [float(r) for r in rates.split(",")]


def cost(args: argparse.Namespace, workdir: Path) -> int:
    results: list[dict[str, Any]] = []
    loads = live.LoadSampler()
    try:
        for number, (mode, code, rates) in enumerate(args.config):
            dep = live.Deployment(workdir / f"d{number}", mode, code_root=code)
            windows: list[tuple[float, live.CostWindow]] = []
            try:
                dep.start(args.ready_timeout)
                time.sleep(args.warmup)
                user, threads = live.start_user(dep, rates[0], args.poll_ms)
                for lead_rate in rates:
                    user.lead_rate = lead_rate
                    window = live.CostWindow(dep).begin()
                    time.sleep(args.seconds)
                    windows.append((lead_rate, window.end()))
                user.stop_creating.set()
                uptime_end = live.uptime()
                pending_end = live.backlog(dep.ledger_url)
                live.finish_user(user, threads, args.drain_seconds)
                c = live.collect(dep, user)
                done = processed_times(c)
                for lead_rate, window in windows:
                    fig = window.figures(c)
                    samples = c.samples(window.t0, window.t1)
                    p95 = {}
                    for key in ("cdc", "assignment", "first_response"):
                        values = [v for _, v in samples[key] if v is not None]
                        missing = len(samples[key]) - len(values)
                        p95[key] = (pct(values, 0.95) if values else None, missing)
                    processed = sum(1 for t in done.values() if window.t0 * 1000 <= t <= window.t1 * 1000)  # fmt: skip
                    results.append(
                        {
                            "label": f"{mode} @ {code.name} ({dep.version}), {lead_rate:g} leads/s",
                            "fig": fig,
                            "p95": p95,
                            "processed": processed,
                            "load": loads.between(window.t0, window.t1),
                            "uptime_end": uptime_end,
                            "pending_end": pending_end,
                            "errors": len(user.obs.errors),
                        }
                    )
                    print(f"\n{results[-1]['label']}: load {results[-1]['load']}; uptime at the end {uptime_end}")  # fmt: skip
                    live.print_cost(fig, pending_end)
            finally:
                dep.stop()
    finally:
        loads.stop()

    base = results[-1]["fig"]
    print(
        f"\nSide by side ({args.seconds:g}-s windows; ratios against the last row, the baseline):"
    )
    print("\n| configuration | load (1 min, mean, max) | events committed (/s) | events processed | Dagster runs (per hour) | CPU-s, dagster dev tree (% of a core) | CPU-s per 1,000 events | vs baseline | p95 CDC / assignment / first response |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        fig = r["fig"]

        def cell(key: str, r: dict[str, Any] = r) -> str:
            value, missing = r["p95"][key]
            text = "-" if value is None else f"{value:.2f} s"
            return text + (f" ({missing} never seen)" if missing else "")

        runs = sum(fig["runs"].values())
        print(
            f"| {r['label']} | {r['load']} | {fig['events']} ({fig['events'] / fig['window']:.2f}) | "
            f"{r['processed']} | {runs} ({fig['runs_per_hour']:.0f}) {fig['runs']} | "
            f"{fig['cpu']:.1f} ({fig['cpu'] / fig['window'] * 100:.0f}%) | {fig['cpu_per_1000']:.1f} | "
            f"{fig['cpu_per_1000'] / base['cpu_per_1000']:.2f}x CPU/event, "
            f"{(fig['runs_per_hour'] / base['runs_per_hour']) if base['runs_per_hour'] else float('nan'):.3f}x runs/h | "
            f"{cell('cdc')} / {cell('assignment')} / {cell('first_response')} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--code", default=str(live.REPO_ROOT), help="repository or worktree to run")
        p.add_argument("--poll-ms", type=float, default=100.0)
        p.add_argument("--warmup", type=float, default=15.0)
        p.add_argument("--ready-timeout", type=float, default=600.0)
        p.add_argument("--drain-seconds", type=float, default=120.0)
        p.add_argument("--keep", action="store_true", help="keep the scratch directory")

    def phased(name: str, help: str, func: Any, post_seconds: float) -> argparse.ArgumentParser:
        """A scenario with a steady phase before (--pre-seconds) and after (--post-seconds)."""
        p = commands.add_parser(name, help=help)
        common_args(p)
        p.add_argument("--pre-seconds", type=float, default=60.0)
        p.add_argument("--post-seconds", type=float, default=post_seconds)
        p.set_defaults(func=func)
        return p

    b = phased("burst", "10x burst in stream mode", burst, post_seconds=180.0)
    b.add_argument("--burst-rate", type=float, default=10.0)
    b.add_argument("--burst-seconds", type=float, default=60.0)

    k = phased("backlog", "stop the stream, build a backlog, restart", backlog, post_seconds=300.0)
    k.add_argument("--backlog-minutes", type=float, default=30.0)
    k.add_argument("--outage-seconds", type=float, default=180.0)
    k.add_argument("--sim-seed", type=int, default=8)

    c = commands.add_parser("cost", help="CPU and runs side by side")
    common_args(c)
    c.add_argument("--seconds", type=float, default=240.0, help="window per rate")
    c.add_argument(
        "--config",
        type=parse_config,
        action="append",
        required=True,
        help="MODE:CODE_DIR:RATES, e.g. stream:/tmp/wt:1,10; the last one is the baseline",
    )
    c.set_defaults(func=cost)

    args = parser.parse_args()
    live.exit_on_sigterm()
    return live.run_in_scratch(args, f"bench_live_{args.command}_", args.func)


if __name__ == "__main__":
    sys.exit(main())
