"""Recovery after hard kills, and org updates per lead with and without kills (issue 7).

Two deployments of the real pipeline (``kpi_pipeline_tests.support.harness.Deployment``:
``dagster-daemon run -w workspace.yaml`` on a fresh DAGSTER_HOME with the repository's
dagster.yaml, the detached sandbox org) process copies of one seeded sandbox store, one after
the other so neither takes CPU from the other:

* clean: start, wait until caught up (every org change in the ledger inbox, no staged batch,
  no pending or claimed outbox row, and still so 6 s later); then for each kill mode a wave
  of new org activity (``harness.add_wave``: the same records in both runs) and again until
  caught up; stop;
* killed: start, then for each kill mode in turn the same wave, then SIGKILL (run worker:
  every run worker alive while outbox rows are claimed; group: the daemon's process group,
  also while rows are claimed; daemon: the daemon process alone while a run is going),
  restart (the daemon keeps running after a run worker kill), and wait until caught up
  again before the next wave.

Per kill: seconds from the restart to the first batch completed after it, and to caught up.
Per deployment: our Lead UPDATEs in the sandbox's change log (changeOrigin client=kpi_pipeline)
per lead. The extra updates of the killed run are set against the outbox rows that were
claimed when a kill landed (unconfirmed sends, which may be re-sent).

The sandbox answers every update ``--update-delay`` seconds after applying it (both runs), so
drains hold their claims long enough to be killed mid-send. Settings for both runs come from
``--env`` (defaults: the integration test's; production timeouts only stretch the waits).

    python bench/bench_recovery.py [--leads 60] [--wave-leads 20] [--seed 23]
                                   [--update-delay 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Metrics files of this process go to the scratch directory, never ./.kpi_data.
WORKDIR = Path(tempfile.mkdtemp(prefix="bench_recovery_"))
os.environ.setdefault("KPI_METRICS_DIR", str(WORKDIR / "metrics"))
os.environ.setdefault("KPI_CDC_MODE", "sensor")  # recovery of per-batch runs

from kpi_pipeline_tests.support import harness  # noqa: E402
from kpi_pipeline_tests.support.harness import Deployment  # noqa: E402

DEFAULT_ENV = {
    "KPI_CDC_MAX_EVENTS_PER_TICK": "100",
    "KPI_CDC_RUN_MAX_RUNTIME_SECONDS": "30",
    "KPI_CDC_STALLED_BATCH_MINUTES": "0.5",
    "KPI_WRITEBACK_LEASE_SECONDS": "10",
    "KPI_WRITEBACK_IDLE_DRAIN_SECONDS": "5",
}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _wave(dep: Deployment, number: int, leads: int, base_ms: int):
    return lambda: harness.add_wave(
        dep.data_dir,
        number,
        leads=leads,
        base_ms=base_ms + number * 3_600_000,
        reassign_at_ms=int(time.time() * 1000),
    )


def _clean(
    template: Path, env: dict[str, str], waves: int, leads: int, base_ms: int, timeout: float
) -> dict:
    dep = Deployment(WORKDIR / "clean", env)
    dep.prepare(template)
    times = []
    try:
        started = time.time()
        dep.start()
        times.append(round(dep.wait_caught_up(timeout) - started, 1))
        for number in range(1, waves + 1):
            started = time.time()
            _wave(dep, number, leads, base_ms)()
            times.append(round(dep.wait_caught_up(timeout) - started, 1))
    finally:
        dep.stop()
    outcome = harness.read_outcome(dep.data_dir)
    return {"caught_up_s": times, "outcome": outcome}


def _killed(
    template: Path, env: dict[str, str], modes: list[str], leads: int, base_ms: int, timeout: float
) -> dict:
    dep = Deployment(WORKDIR / "killed", env)
    dep.prepare(template)
    recoveries = []
    try:
        dep.start()
        dep.wait_caught_up(timeout)
        for number, mode in enumerate(modes, start=1):
            recovery = harness.kill_and_recover(
                dep,
                mode,
                claim_timeout=60.0,
                recover_timeout=timeout,
                settle=True,
                before=_wave(dep, number, leads, base_ms),
            )
            recoveries.append(recovery)
            print(f"  {mode}: {recovery}", flush=True)
    finally:
        dep.stop()
    return {"recoveries": recoveries, "outcome": harness.read_outcome(dep.data_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=60, help="simulated leads seeded")
    parser.add_argument("--wave-leads", type=int, default=20, help="leads per wave (one a kill)")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--update-delay", type=float, default=3.0, help="sandbox update answer delay (s)"
    )
    parser.add_argument(
        "--mode", action="append", choices=harness.KILL_MODES, help="kill modes, in order"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for both runs")
    parser.add_argument("--timeout", type=float, default=300.0, help="per wait (s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help=f"keep the scratch directory {WORKDIR}")
    args = parser.parse_args()
    env = dict(DEFAULT_ENV)
    env["KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS"] = repr(args.update_delay)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    modes = args.mode or list(harness.KILL_MODES)

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; scratch {WORKDIR}")
    print(f"settings: {env}")
    template = WORKDIR / "template.db"
    changes = harness.seed_store(template, leads=args.leads, days=args.days, seed=args.seed)
    print(
        f"workload: {args.leads} leads over {args.days:g} days, seed {args.seed}, {changes} changes"
    )
    base_ms = int(time.time() * 1000) - 6 * 3_600_000  # the waves' leads arrive from here
    loads = [_uptime()]
    try:
        clean = _clean(template, env, len(modes), args.wave_leads, base_ms, args.timeout)
        loads.append(_uptime())
        print(
            f"clean: caught up after {clean['caught_up_s']} s (seeded, then each wave)", flush=True
        )
        killed = _killed(template, env, modes, args.wave_leads, base_ms, args.timeout)
        loads.append(_uptime())
    finally:
        if not args.keep:
            harness.remove_tree(WORKDIR)
    a, b = clean["outcome"], killed["outcome"]
    print("\nload: " + " | ".join(loads))
    print(
        "\n| kill | claim held | rows claimed at kill | restart → first batch | restart → caught up |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in killed["recoveries"]:
        first = "n/a" if r.first_batch_s is None else f"{r.first_batch_s:.1f} s"
        print(f"| {r.mode} | {r.claim_held} | {r.claimed_rows} | {first} | {r.caught_up_s:.1f} s |")
    extra = b.our_updates - a.our_updates
    unconfirmed = sum(r.claimed_rows for r in killed["recoveries"])
    print("\n| run | leads | our Lead updates | per lead |")
    print("| --- | --- | --- | --- |")
    for name, o in (("clean", a), ("killed", b)):
        print(f"| {name} | {o.leads} | {o.our_updates} | {o.updates_per_lead:.2f} |")
    print(
        f"\nextra updates with kills: {extra}; outbox rows claimed when kills landed: {unconfirmed}"
    )
    checks = {
        "org equals ledger (killed)": harness.check_org_equals_ledger(b),
        "first response never moved later (killed)": harness.check_first_response_never_later(b),
        "outbox empty (killed)": harness.check_outbox_empty(b),
    }
    for name, found in checks.items():
        print(f"{'ok  ' if not found else 'FAIL'} {name} {found[:3] if found else ''}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "leads": args.leads,
                    "wave_leads": args.wave_leads,
                    "seed": args.seed,
                    "env": env,
                    "load": loads,
                    "clean_caught_up_s": clean["caught_up_s"],
                    "recoveries": [vars(r) for r in killed["recoveries"]],
                    "updates": {"clean": a.our_updates, "killed": b.our_updates},
                    "unconfirmed_at_kills": unconfirmed,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
