"""Stream mode under kill -9 (issue 8), with real processes.

``test_stream_mode_survives_kill_9_and_matches_a_clean_run``: two deployments
(``harness.Deployment``: a dagster-daemon on a fresh DAGSTER_HOME, the repository's
dagster.yaml and run launcher, the detached sandbox org), both with ``KPI_CDC_MODE=stream``,
process the same workload: a copy of one simulated store, plus a wave of new org activity
written into both before each kill. One runs undisturbed. In the other, SIGKILL lands on the
worker process of the ``cdc_stream`` run that holds the channel leases, at a random moment
while a wave is being processed; nothing is restarted by hand. Run monitoring (the repo's
launcher checks the worker's pid) fails the dead run, the sensor (or Dagster's run retry)
starts another, which waits for the dead run's leases to expire and takes the channels over.
Short generations make a clean generation handover happen within the test as well.

Then the two are compared with the ``harness.check_*`` functions, plus: every org change is
staged exactly once (the inbox is keyed by (channel, replay id), so its count equal to the
org's change log means nothing lost and nothing twice), every killed run ended FAILURE, and
each takeover came after the dead holder's lease expired. The ``live_path_health`` check,
evaluated against the killed deployment's instance and ledger every half second, must fail
after each kill (once run monitoring has failed the dead run, before the takeover) and pass
again once the deployment has caught up. Every check is reported; the test fails listing
all that did not hold.
"""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.defs.cdc.checks import live_path_health
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline_tests.support import harness
from kpi_pipeline_tests.support.harness import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEADS, DAYS, SEED = 30, 1.0, 29
WAVE_LEADS = 8
KILLS = 3
STREAM_JOB = "cdc_stream"
# Shared by both deployments, on top of harness.RECOVERY_ENV (short write-back lease and idle
# drain): stream mode, 5 s leases (a killed run's channels are free 5 s after its last
# renewal), 40 s generations (so a clean handover happens too). The killed deployment's org
# answers each update 3 s after applying it (harness.SLOW_UPDATES_ENV), so a drain is in
# flight (claims held, the org already has the values) for a good share of each wave.
# Production values only change how long recovery takes, not what it must end with.
ENV = {
    "KPI_CDC_MODE": "stream",
    "KPI_CDC_STREAM_LEASE_SECONDS": "5",
    "KPI_CDC_STREAM_GENERATION_SECONDS": "40",
}
KILL_DELAY_S = (0.0, 6.0)  # after a wave is written, the kill lands this long later
FIND_TIMEOUT = 120.0
HEALTHY_AGAIN_TIMEOUT = 60.0


@pytest.fixture
def deployments(tmp_path):
    with harness.paired_deployments(tmp_path, ENV, leads=LEADS, days=DAYS, seed=SEED) as pair:
        yield pair


@pytest.fixture
def health_of(monkeypatch):
    """Evaluates live_path_health as the deployment's own check would: its Dagster instance
    (read from its DAGSTER_HOME) and its ledger, in stream mode."""
    monkeypatch.setenv("KPI_CDC_MODE", "stream")
    opened: list[dg.DagsterInstance] = []

    def evaluate(dep: Deployment) -> dg.AssetCheckResult:
        if not opened:
            opened.append(dg.DagsterInstance.from_config(str(dep.home)))
        context = dg.build_asset_check_context(instance=opened[0])
        return live_path_health(context, pipeline=PipelineResource(data_dir=str(dep.data_dir)))

    yield evaluate
    for instance in opened:
        instance.dispose()
    wiring.reset_cache()


def _holder(dep: Deployment) -> tuple[str | None, datetime | None]:
    """The one run holding every channel's unexpired lease, and when its lease expires."""
    leases = harness.channel_leases(dep.data_dir)
    now = datetime.now(UTC)
    holders = {holder for _, holder, _, expires in leases if expires > now}
    if len(holders) != 1 or not all(expires > now for *_, expires in leases) or not leases:
        return None, None
    return holders.pop(), min(expires for *_, expires in leases)


def _consuming_worker(dep: Deployment, timeout: float) -> tuple[str, int]:
    """The cdc_stream run that holds the leases now, and its worker's pid: the pid it logged
    ("Started process for run (pid: N)"), which must be a live run worker of this instance
    (a spawn child of the code server, as test_hard_kills finds them)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        holder, _ = _holder(dep)
        if holder is not None:
            runs = {r["id"]: r for r in harness.job_runs(dep.env, STREAM_JOB)}
            run = runs.get(holder)
            last = run
            if (
                run
                and run["status"] == "STARTED"
                and run["pid"] in harness.run_worker_pids(dep.home)
            ):
                return holder, run["pid"]
        time.sleep(0.5)
    raise AssertionError(
        f"{dep.root.name}: no consuming cdc_stream worker within {timeout:.0f} s (last {last}, "
        f"leases {harness.channel_leases(dep.data_dir)})\n--- daemon log tail ---\n"
        f"{dep.log_path.read_text()[-3000:]}"
    )


def _describe(progress: harness.Progress) -> str:
    return (
        f"{progress.org_changes - progress.inbox} org changes not yet staged, "
        f"{progress.staged} batches staged not done, outbox {progress.outbox or {}}"
    )


@pytest.mark.timeout(420)
def test_stream_mode_survives_kill_9_and_matches_a_clean_run(deployments, health_of):
    clean, killed = deployments
    seed = int(os.environ.get("KPI_TEST_KILL_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    started = time.monotonic()
    base_ms = int(time.time() * 1000) - 6 * 3600 * 1000

    def add_wave(number: int) -> None:
        harness.add_wave_to_each((clean, killed), number, leads=WAVE_LEADS, base_ms=base_ms)

    clean.start()
    killed.start()
    kills: list[dict] = []
    for number in range(1, KILLS + 1):
        _consuming_worker(killed, FIND_TIMEOUT)
        add_wave(number)
        delay = rng.uniform(*KILL_DELAY_S)
        time.sleep(delay)
        run_id, pid = _consuming_worker(killed, FIND_TIMEOUT)  # a handover may have come between
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        lease_expires = max(
            (exp for _, h, _, exp in harness.channel_leases(killed.data_dir) if h == run_id),
            default=None,
        )
        left = killed.progress()
        # Recovery: another run holds every channel, then everything staged and written back.
        # Meanwhile the health check must notice that nothing consumes the channels.
        deadline = time.monotonic() + harness.CATCH_UP_TIMEOUT
        takeover = None
        unhealthy = None
        while time.monotonic() < deadline:
            holder, _ = _holder(killed)
            if holder is not None and holder != run_id:
                takeover = (holder, time.time())
                break
            if unhealthy is None:
                check = health_of(killed)
                if not check.passed:
                    unhealthy = (time.time() - killed_at, check.description)
            time.sleep(0.5)
        assert takeover is not None, (
            f"kill {number}: no run took the channels over from {run_id} within "
            f"{harness.CATCH_UP_TIMEOUT:.0f} s\n{killed.log_path.read_text()[-3000:]}"
        )
        acquired = {h: acq for _, h, acq, _ in harness.channel_leases(killed.data_dir)}
        caught_up_at = killed.wait(lambda p: p.caught_up, harness.CATCH_UP_TIMEOUT, "caught up")
        healthy_after = None
        healthy_deadline = time.monotonic() + HEALTHY_AGAIN_TIMEOUT
        while healthy_after is None and time.monotonic() < healthy_deadline:
            if health_of(killed).passed:
                healthy_after = time.time() - killed_at
            else:
                time.sleep(0.5)
        kills.append(
            {
                "number": number,
                "run": run_id,
                "pid": pid,
                "delay_s": delay,
                "killed_at": killed_at,
                "left": left,
                "dead_lease_expires": lease_expires,
                "new_holder": takeover[0],
                "new_acquired": acquired.get(takeover[0]),
                "takeover_s": takeover[1] - killed_at,
                "caught_up_s": caught_up_at - killed_at,
                "unhealthy": unhealthy,
                "healthy_after_s": healthy_after,
            }
        )

    problems: dict[str, list[str]] = {}
    for dep in (clean, killed):
        harness.finish(dep, problems)
    runs = {dep.root.name: harness.job_runs(dep.env, STREAM_JOB) for dep in (clean, killed)}
    done_by = harness.batches_done_by(killed.data_dir)
    progress = {dep.root.name: dep.progress() for dep in (clean, killed)}
    clean.stop()
    killed.stop()
    elapsed = time.monotonic() - started

    a, b = harness.read_outcome(clean.data_dir), harness.read_outcome(killed.data_dir)
    policy = load_policy()
    killed_runs = {k["run"] for k in kills}
    by_id = {r["id"]: r for r in runs["killed"]}
    checks = {
        **{
            f"every org change staged exactly once ({name})": (
                []
                if p.inbox == p.org_changes
                else [f"ledger inbox {p.inbox} events, org change log {p.org_changes}"]
            )
            for name, p in progress.items()
        },
        "killed runs ended FAILURE": [
            f"{run}: {by_id.get(run, {}).get('status')}"
            for run in sorted(killed_runs)
            if by_id.get(run, {}).get("status") != "FAILURE"
        ],
        "a dead run's channels taken over only once its lease expired": [
            f"kill {k['number']}: {k['new_holder']} acquired at {k['new_acquired']}, "
            f"{k['run']}'s lease ran to {k['dead_lease_expires']}"
            for k in kills
            if k["dead_lease_expires"] is None
            or k["new_acquired"] is None
            or k["new_acquired"] < k["dead_lease_expires"]
        ],
        "live_path_health failed after each kill, before the takeover": [
            f"kill {k['number']}: the check kept passing until {k['new_holder'][:8]} took over"
            for k in kills
            if k["unhealthy"] is None
        ],
        "live_path_health passed again after each recovery": [
            f"kill {k['number']}: still failing {HEALTHY_AGAIN_TIMEOUT:.0f} s after catching up"
            for k in kills
            if k["healthy_after_s"] is None
        ],
        **harness.clean_vs_killed_checks(a, b, policy),
        **problems,
    }
    report = harness.check_report(checks)
    kill_lines = []
    for k in kills:
        dead = by_id.get(k["run"], {})
        failed_after = (
            f"{dead['end_time'] - k['killed_at']:.1f} s" if dead.get("end_time") else "never"
        )
        kill_lines.append(
            f"kill {k['number']} (+{k['delay_s']:.1f} s after wave {k['number']}): pid "
            f"{k['pid']} of run {k['run'][:8]} (generation "
            f"{dead.get('tags', {}).get('kpi/generation')}) holding the channels; it left "
            f"{_describe(k['left'])}; run FAILURE after {failed_after}, "
            f"channels taken over by {k['new_holder'][:8]} after {k['takeover_s']:.1f} s, "
            f"caught up after {k['caught_up_s']:.1f} s; live_path_health failed after "
            + (f"{k['unhealthy'][0]:.1f} s ({k['unhealthy'][1]})" if k["unhealthy"] else "never")
            + " and passed again after "
            + (f"{k['healthy_after_s']:.1f} s" if k["healthy_after_s"] else "never")
        )
    run_lines = [
        f"{name}: "
        + ", ".join(
            f"{r['id'][:8]} gen {r['tags'].get('kpi/generation')}"
            + (" retry" if r["tags"].get("dagster/parent_run_id") else "")
            + f" {r['status']} ({done_by.get(r['id'], 0) if name == 'killed' else '-'} batches)"
            for r in reversed(rs)
        )
        for name, rs in runs.items()
    ]
    # Not asserted: the leases, not the run count, keep one consumer per channel. Dagster's
    # run retry (run_retries in dagster.yaml) re-executes a failed cdc_stream run while the
    # sensor starts the next generation, so two stream runs can be going at once.
    ends = [
        (r["start_time"], r["end_time"] or float("inf"))
        for r in runs["killed"]
        if r["start_time"] is not None
    ]
    at_once = max((sum(1 for s, e in ends if s <= t < e) for t, _ in ends), default=0)
    print(
        f"\nseed {seed}\n{report}\n"
        + "\n".join(kill_lines)
        + "\ncdc_stream runs:\n  "
        + "\n  ".join(run_lines)
        + f"\nat most {at_once} cdc_stream runs going at once in the killed deployment"
        + f"\nupdates per lead: clean {a.updates_per_lead:.2f}, killed {b.updates_per_lead:.2f};"
        f" {elapsed:.0f} s"
    )
    assert a.leads == b.leads == LEADS + WAVE_LEADS * KILLS
    assert a.routed, "the clean run routed nothing: the workload does not exercise routing"
    assert len(runs["killed"]) > 1, f"one cdc_stream run in the killed deployment: {run_lines}"
    assert len(kills) == KILLS
    assert not any(checks.values()), report
