"""Scale-out on Dagster's Celery executor: a real RabbitMQ broker, a Redis result backend, two
``dagster-celery worker start`` processes, the instance on PostgreSQL (deploy/dagster.celery.yaml
as shipped) and PostgreSQL ledgers.

- a 30-day KPI backfill runs its days as steps on both workers and writes the same files as the
  single-process backfill of the partitioned assets;
- a re-sync of several windows runs a step per window on both workers and leaves the ledger as
  the single-process job does;
- SIGKILL of one worker's process group while it runs a step: the broker hands the unacknowledged
  task to the other worker (acks_late), and the run completes with every day written.

Runs are started the way an operator would, ``dagster job execute`` with KPI_EXECUTOR=celery;
each run's ledger and data directory come in its resource config, so the workers stay up across
the tests. Queue names get a random prefix (KPI_CELERY_QUEUE_PREFIX): other runs of this test on
the same broker never take these tasks.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.adapters.llm.client import selector_from_settings
from kpi_pipeline.app.replay import read_events
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.defs.analytics.assets import build_daily_assets, daily_partitions
from kpi_pipeline.defs.asset_keys import KPI_KEYS
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.defs.resync.jobs import cdc_resync
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, INTEGRATION_USER_ID, SandboxStore
from kpi_pipeline_tests.support.ledgers import PG_ADMIN_URL
from kpi_pipeline_tests.support.processors import make_processor
from kpi_pipeline_tests.support.sandbox_org import (
    CONSUMER_KEY,
    USERNAME,
    SandboxOrg,
    key_and_certificate,
    sandbox_org,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BROKER = os.environ.get("KPI_TEST_CELERY_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("KPI_TEST_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/0")
START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = [(START + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(30)]
AS_OF = "2026-10-05T00:00:00Z"
MINUTE = 60_000


@dataclass
class Cluster:
    env: dict[str, str]
    tmp: Path
    prefix: str
    workers: dict[str, subprocess.Popen]  # worker hostname -> its `dagster-celery` process
    org: SandboxOrg
    instance: dg.DagsterInstance


def _require_services() -> None:
    """CI starts RabbitMQ and Redis (.ci/run, DEPLOYMENT.md §4); here they must answer."""
    import redis
    from kombu import Connection

    try:
        with Connection(BROKER, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
        redis.Redis.from_url(BACKEND, socket_connect_timeout=5).ping()
    except Exception as exc:
        pytest.fail(
            f"the Celery broker {BROKER} or result backend {BACKEND} does not answer ({exc}); "
            "start them as DEPLOYMENT.md §4 says (rabbitmq-server, redis-server)"
        )


def _create_db(admin: sa.Engine) -> tuple[str, str]:
    name = f"kpi_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _start_worker(env: dict[str, str], tmp: Path, prefix: str, name: str) -> subprocess.Popen:
    log = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen(
        [
            str(BIN / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(REPO_ROOT / "deploy" / "celery_worker.yaml"),
            # One -q with a comma list: dagster-celery passes each -q on as -Q, and celery
            # keeps only the last -Q.
            "-q",
            f"{prefix}kpi,{prefix}resync",
            "-n",
            f"{prefix}{name}",
            # Imported before the pool forks: a task does not pay for loading the definitions.
            "-i",
            "kpi_pipeline.definitions",
            "--",
            "--concurrency=1",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(tmp: Path, names: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in (tmp / f"{n}.log").read_text(errors="replace") for n in names):
            return
        time.sleep(0.5)
    pytest.fail("Celery workers not ready:\n" + _logs(tmp, names))


def _logs(tmp: Path, names: list[str]) -> str:
    return "\n".join(
        f"--- {n}\n" + (tmp / f"{n}.log").read_text(errors="replace")[-3000:] for n in names
    )


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _require_services()
    tmp = tmp_path_factory.mktemp("celery")
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    db_name, _ = _create_db(admin)
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.celery.yaml", home / "dagster.yaml")
    key_file = tmp / "jwt_key.pem"
    key_file.write_bytes(key_and_certificate()[0])
    prefix = f"t{uuid.uuid4().hex[:8]}."
    workers: dict[str, subprocess.Popen] = {}
    with sandbox_org(tmp / "org") as org, pytest.MonkeyPatch.context() as mp:
        env_vars = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": db_name,
            "KPI_EXECUTOR": "celery",
            "KPI_CELERY_QUEUE_PREFIX": prefix,
            "DAGSTER_CELERY_BROKER_URL": BROKER,
            "DAGSTER_CELERY_BACKEND_URL": BACKEND,
            # Both sides of each comparison read the org; none may change it under the other.
            "KPI_WRITEBACK_ENABLED": "false",
            "KPI_SALESFORCE_LOGIN_URL": org.url,
            "REQUESTS_CA_BUNDLE": org.ca_file,
            "KPI_SALESFORCE_CLIENT_ID": CONSUMER_KEY,
            "KPI_SALESFORCE_USERNAME": USERNAME,
            "KPI_SALESFORCE_PRIVATE_KEY_FILE": str(key_file),
            "KPI_DATA_DIR": str(tmp / "default_data"),
        }
        for key, value in env_vars.items():
            mp.setenv(key, value)
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
            "PYTHONPATH": str(REPO_ROOT),
        }
        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        try:
            for name in ("w1", "w2"):
                workers[f"{prefix}{name}@{os.uname().nodename}"] = _start_worker(
                    env, tmp, prefix, name
                )
            _wait_ready(tmp, ["w1", "w2"])
            wiring.reset_cache()
            with dg.DagsterInstance.get() as instance:
                yield Cluster(env, tmp, prefix, workers, org, instance)
        finally:
            for proc in workers.values():
                _killpg(proc)
            wiring.reset_cache()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def month_ledger(cluster: Cluster) -> Iterator[str]:
    """A PostgreSQL ledger holding 30 simulated days, processed by the batch processor."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name, url = _create_db(admin)
    start_ms = int(START.timestamp() * 1000)
    store = SandboxStore(cluster.tmp / "sim.db", clock=lambda: start_ms + 31 * 86_400_000)
    simulate(store, leads=90, days=30, seed=14, start_ms=start_ms)
    store.export_recorded(cluster.tmp / "events.jsonl")
    store.close()
    ledger = Ledger.from_url(url)
    processor = make_processor(ledger, load_policy(), selector=selector_from_settings())
    events = read_events(cluster.tmp / "events.jsonl")
    for offset in range(0, len(events), 500):
        processor.process(events[offset : offset + 500])
    ledger.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def single_process_kpis(cluster: Cluster, month_ledger: str) -> Path:
    """The reference: the partitioned assets' backfill of the 30 days as one run, in process."""
    data_dir = cluster.tmp / "kpis_single"
    kpi_rollups = build_daily_assets(daily_partitions("UTC"))[0]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [kpi_rollups],
            instance=instance,
            resources={
                "pipeline": PipelineResource(data_dir=str(data_dir), ledger_url=month_ledger)
            },
            run_config={"ops": {"kpi_rollups": {"config": {"as_of": AS_OF}}}},
            tags={
                "dagster/asset_partition_range_start": DAYS[0],
                "dagster/asset_partition_range_end": DAYS[-1],
            },
        )
    assert result.success
    return data_dir


def _execute(cluster: Cluster, job: str, run_config: dict[str, Any]) -> subprocess.Popen:
    config = cluster.tmp / f"{job}-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump(run_config))
    return subprocess.Popen(
        [
            *(str(BIN / "dagster"), "job", "execute", "-m", "kpi_pipeline.definitions"),
            *("-j", job, "-c", str(config)),
        ],
        cwd=REPO_ROOT,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(cluster: Cluster, proc: subprocess.Popen, timeout: float = 180) -> dg.DagsterRun:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the run's process, left alone, would keep waiting on the broker
        out, _ = proc.communicate()
        pytest.fail(f"the run did not finish in {timeout} s:\n{out[-4000:]}")
    [run] = cluster.instance.get_runs(limit=1)
    assert proc.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, out[-4000:] + _logs(
        cluster.tmp, ["w1", "w2"]
    )
    return run


def _worker_of_steps(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, Celery worker) of every task execution the workers reported, in order."""
    executions = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event else {}
        if "Celery worker" in metadata:
            executions.append((event.step_key, str(metadata["Celery worker"].value)))
    return executions


def _succeeded_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        r.dagster_event.step_key
        for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
    }


def _backfill_config(ledger_url: str, data_dir: Path, days: list[str] = DAYS) -> dict[str, Any]:
    return {
        "ops": {
            "kpi_backfill_days": {"config": {"start": days[0], "end": days[-1], "as_of": AS_OF}}
        },
        "resources": {
            "pipeline": {"config": {"ledger_url": ledger_url, "data_dir": str(data_dir)}}
        },
    }


def _assert_same_kpi_files(reference: Path, data_dir: Path, days: list[str] = DAYS) -> None:
    files = sorted(
        p.relative_to(reference) for p in (reference / "kpis").rglob("*.csv") if p.stem in days
    )
    assert len(files) == len(KPI_KEYS) * len(days)
    assert sorted(p.relative_to(data_dir) for p in (data_dir / "kpis").rglob("*.csv")) == files
    _, mismatch, errors = filecmp.cmpfiles(
        reference, data_dir, [str(f) for f in files], shallow=False
    )
    assert (mismatch, errors) == ([], [])


def test_kpi_backfill_runs_its_days_on_both_workers_and_equals_the_single_process_run(
    cluster: Cluster, month_ledger: str, single_process_kpis: Path
) -> None:
    data_dir = cluster.tmp / "kpis_celery"
    run = _finish(
        cluster, _execute(cluster, "kpi_backfill", _backfill_config(month_ledger, data_dir))
    )
    executions = _worker_of_steps(cluster.instance, run.run_id)
    day_steps = {step: worker for step, worker in executions if step.startswith("kpi_rollup_day[")}
    assert len(day_steps) == len(DAYS)
    assert set(day_steps.values()) == set(cluster.workers), executions
    _assert_same_kpi_files(single_process_kpis, data_dir)
    # Each day shows as a materialized partition of every KPI asset.
    for key in KPI_KEYS.values():
        assert set(DAYS) <= cluster.instance.get_materialized_partitions(key)


def _record_windows(ledger: Ledger, starts: list[int]) -> list[int]:
    return [
        ledger.record_resync_window(
            ResyncGap(
                channel="/data/LeadChangeEvent",
                reason="replay_id_invalid",
                from_replay=replay_id_from_int(100 + i),
                from_time_ms=start,
                to_time_ms=start + 3 * MINUTE,
            )
        )
        for i, start in enumerate(starts)
    ]


def _ledger_state(url: str) -> dict[str, Any]:
    ledger = Ledger.from_url(url)
    try:
        facts = ledger.lead_facts_frame().sort_values("Id").reset_index(drop=True)
        return {
            "facts": facts.drop(columns=[c for c in facts.columns if c.endswith("_At__c")]),
            "assigned": facts["Owner_Assigned_At__c"].notna().tolist(),
            "open_windows": ledger.open_resync_windows(),
            "closed": len(ledger.resync_windows(status="closed")),
        }
    finally:
        ledger.dispose()


def test_resync_fans_out_a_step_per_window_and_gives_the_same_ledger(
    cluster: Cluster, make_postgres_db
) -> None:
    t0 = (int(time.time()) // 60) * 60_000 - 120 * MINUTE
    starts = [t0 + k * 10 * MINUTE for k in range(4)]
    leads = [
        cluster.org.store.create_record(
            "Lead",
            {"LastName": f"Gap{k}{i}", "Company": f"Gap Co {k}", "OwnerId": INBOUND_QUEUE.id},
            user_id=INTEGRATION_USER_ID,
            at_ms=start + (i + 1) * MINUTE // 2,
        )
        for k, start in enumerate(starts)
        for i in range(3)
    ]
    single, fanned = make_postgres_db(), make_postgres_db()
    for url in (single, fanned):
        ledger = Ledger.from_url(url)
        _record_windows(ledger, starts)
        ledger.dispose()

    wiring.reset_cache()
    done = cdc_resync.execute_in_process(
        run_config={"ops": {"resync_plan": {"config": {"window_ids": []}}}},
        resources={
            "pipeline": PipelineResource(data_dir=str(cluster.tmp / "rs1"), ledger_url=single)
        },
        raise_on_error=False,
    )
    assert done.success
    run = _finish(
        cluster,
        _execute(
            cluster,
            "cdc_resync",
            {
                "ops": {"resync_plan": {"config": {"window_ids": []}}},
                "resources": {
                    "pipeline": {
                        "config": {"ledger_url": fanned, "data_dir": str(cluster.tmp / "rs2")}
                    }
                },
            },
        ),
    )
    window_steps = {
        step: worker
        for step, worker in _worker_of_steps(cluster.instance, run.run_id)
        if step.startswith("resync_window[")
    }
    assert sorted(window_steps) == [f"resync_window[w{i}]" for i in range(1, 5)]
    assert set(window_steps.values()) == set(cluster.workers)

    expected, got = _ledger_state(single), _ledger_state(fanned)
    assert (got["open_windows"], got["closed"]) == ([], 4)
    assert (expected["open_windows"], expected["closed"]) == ([], 4)
    assert sorted(got["facts"]["Id"]) == sorted(leads)
    # Which rep of a round-robin pool takes which lead follows the order the windows' steps
    # route in, and the assignment latency is wall-clock time; everything else is equal, and
    # the pool's rotation stays balanced (no slot taken twice by racing workers).
    wall_clock_or_order = ["OwnerId", "Assignment_Latency_Minutes__c"]
    assert (
        got["facts"]
        .drop(columns=wall_clock_or_order)
        .equals(expected["facts"].drop(columns=wall_clock_or_order))
    )
    assert Counter(got["facts"]["OwnerId"]) == Counter(expected["facts"]["OwnerId"])
    assert got["facts"]["Assignment_Latency_Minutes__c"].notna().all()
    assert got["assigned"] == expected["assigned"]
    assert all(got["assigned"])


def test_killing_a_worker_mid_step_hands_its_task_to_the_other_and_loses_nothing(
    cluster: Cluster, month_ledger: str, single_process_kpis: Path
) -> None:
    victim, survivor = sorted(cluster.workers)
    data_dir = cluster.tmp / "kpis_killed"
    days = DAYS[:10]  # enough steps to catch the victim inside one; fewer keeps CI short
    proc = _execute(cluster, "kpi_backfill", _backfill_config(month_ledger, data_dir, days))
    killed_step = None
    deadline = time.monotonic() + 120
    while killed_step is None and proc.poll() is None and time.monotonic() < deadline:
        runs = cluster.instance.get_runs(
            filters=dg.RunsFilter(job_name="kpi_backfill", statuses=[dg.DagsterRunStatus.STARTED]),
            limit=1,
        )
        if runs:
            run_id = runs[0].run_id
            on_victim = [s for s, w in _worker_of_steps(cluster.instance, run_id) if w == victim]
            running = [s for s in on_victim if s.startswith("kpi_rollup_day[")]
            running = [s for s in running if s not in _succeeded_steps(cluster.instance, run_id)]
            if running:
                killed_step = running[-1]
                _killpg(cluster.workers[victim])  # the worker and its pool child, mid-step
                break
        time.sleep(0.02)
    if killed_step is None:
        proc.kill()
        proc.communicate()
        pytest.fail("never saw the victim worker running a day step")

    run = _finish(cluster, proc)
    assert run.run_id == run_id
    executions = _worker_of_steps(cluster.instance, run.run_id)
    # The step the victim was running when it died ran again, on the survivor, and succeeded.
    assert (killed_step, survivor) in executions
    assert killed_step in _succeeded_steps(cluster.instance, run.run_id)
    _assert_same_kpi_files(single_process_kpis, data_dir, days)
