"""End to end with real processes: dagster-daemon + code server + run workers + sandbox org.

The daemon evaluates cdc_sensor against the embedded sandbox (its own process, started by
the first code server and outliving it), launches process_cdc_batch runs, and commits the cursor. We kill it hard and
start it again against the same instance storage (SQLite, and PostgreSQL through
dagster-postgres): the cursor must survive, keep advancing, and nothing may be staged or
launched twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kpi_pipeline.cdc.cursor import SensorCursor

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _write_instance_yaml(home: Path, storage: str, postgres_url: str | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    if storage == "postgres":
        assert postgres_url
        pg = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
        storage_yaml = f"storage:\n  postgres:\n    postgres_url: {pg}\n"
    else:
        storage_yaml = f"storage:\n  sqlite:\n    base_dir: {home / 'storage'}\n"
    (home / "dagster.yaml").write_text(
        storage_yaml
        + "run_retries:\n  enabled: true\n  max_retries: 2\n"
        + "concurrency:\n  runs:\n    max_concurrent_runs: 2\n"
        + "telemetry:\n  enabled: false\n"
    )


def _start_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _state(env: dict[str, str]) -> dict:
    """Read the instance from a separate process, as an operator would after a restart."""
    script = (
        "import json\n"
        "from dagster import DagsterInstance, DagsterRunStatus\n"
        "inst = DagsterInstance.get()\n"
        "cursor = None\n"
        "for st in inst.all_instigator_state():\n"
        "    if st.name == 'cdc_sensor':\n"
        "        cursor = st.instigator_data.cursor if st.instigator_data else None\n"
        "runs = inst.get_runs()\n"
        "print(json.dumps({'cursor': cursor,\n"
        "  'runs': [{'key': r.tags.get('dagster/run_key'), 'job': r.job_name, 'status': r.status.value} for r in runs]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for(env: dict[str, str], predicate, timeout: float, log_path: Path) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = _state(env)
        if predicate(state):
            return state
        time.sleep(3)
    raise AssertionError(
        f"timed out; last state {state}\n--- daemon log tail ---\n{log_path.read_text()[-4000:]}"
    )


def _succeeded(state: dict) -> list[dict]:
    return [
        r for r in state["runs"] if r["job"] == "process_cdc_batch" and r["status"] == "SUCCESS"
    ]


def _replay_positions(cursor_json: str) -> dict[str, int]:
    cursor = SensorCursor.from_json(cursor_json)
    return {
        ch: int.from_bytes(c.replay_id, "big") for ch, c in cursor.channels.items() if c.replay_id
    }


def _settled(state: dict) -> bool:
    """Every process_cdc_batch run finished (none queued or running)."""
    runs = [r for r in state["runs"] if r["job"] == "process_cdc_batch"]
    return bool(runs) and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)


def _ledger_counts(data_dir: Path) -> tuple[int, int, int, int]:
    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        inbox, distinct = conn.execute(
            sa.text("select count(*), count(distinct channel || hex(replay_id)) from cdc_inbox")
        ).one()
        pending = conn.execute(
            sa.text("select count(*) from cdc_batches where status != 'done'")
        ).scalar_one()
        leads = conn.execute(sa.text("select count(*) from lead_facts")).scalar_one()
    engine.dispose()
    return inbox, distinct, pending, leads


def _add_leads(data_dir: Path, count: int) -> list[str]:
    """New activity in the org while the daemon is down."""
    from kpi_pipeline.sandbox.store import QUEUE_IDS, REP_USER_IDS, SandboxStore

    store = SandboxStore(data_dir / "sandbox.db")
    try:
        return [
            store.create_record(
                "Lead",
                {
                    "Company": f"Restart Co {i}",
                    "Name": {"LastName": f"Restart {i}"},
                    "Status": "Open - Not Contacted",
                    "OwnerId": QUEUE_IDS[0],
                    "LeadSource": "Web",
                    "Address": {"CountryCode": "US"},
                },
                user_id=REP_USER_IDS[0],
            )
            for i in range(count)
        ]
    finally:
        store.close()


@pytest.fixture
def stop_sandbox(tmp_path):
    """The sandbox outlives the code server that started it: stop it after the test."""
    yield
    from kpi_pipeline.sandbox.runtime import shutdown_sandbox

    shutdown_sandbox(tmp_path / "kpi")


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_daemon_drains_sandbox_and_cursor_survives_restart(
    tmp_path, storage, make_postgres_db, stop_sandbox
):
    postgres_url = make_postgres_db() if storage == "postgres" else None
    home = tmp_path / "dagster_home"
    _write_instance_yaml(home, storage, postgres_url)
    data_dir = tmp_path / "kpi"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KPI_DATA_DIR": str(data_dir),
        "KPI_SANDBOX_SEED": "11",
        "KPI_SANDBOX_LEADS_PER_DAY": "20",
        "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = tmp_path / "daemon.log"
    # Create the instance storage before the daemon starts: two processes initialising the
    # same fresh SQLite storage at once can both stamp its alembic version table.
    assert _state(env)["runs"] == []

    # Phase 1: the daemon drains the seeded history; stop it hard once everything settled.
    daemon = _start_daemon(env, log_path)
    try:
        first = _wait_for(
            env,
            lambda s: s["cursor"] and _settled(s) and _ledger_counts(data_dir)[2] == 0,
            240,
            log_path,
        )
    finally:
        _kill(daemon)
    positions_before = _replay_positions(first["cursor"])
    assert positions_before, first
    leads_before = _ledger_counts(data_dir)[3]

    # While it is down, the org changes. Phase 2: a new daemon resumes from the stored cursor.
    new_leads = _add_leads(data_dir, 3)
    daemon = _start_daemon(env, log_path)
    try:
        second = _wait_for(
            env,
            lambda s: (
                _replay_positions(s["cursor"]).get("/data/LeadChangeEvent", 0)
                > positions_before["/data/LeadChangeEvent"]
                and _settled(s)
                and _ledger_counts(data_dir)[2] == 0
            ),
            240,
            log_path,
        )
    finally:
        _kill(daemon)

    after = _replay_positions(second["cursor"])
    for channel, position in positions_before.items():
        assert after[channel] >= position, f"{channel} cursor moved backwards after restart"
    runs = [r for r in second["runs"] if r["job"] == "process_cdc_batch"]
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    keys = [r["key"] for r in runs]
    assert len(keys) == len(set(keys)), "a batch was launched twice"
    new_runs = len(runs) - len([r for r in first["runs"] if r["job"] == "process_cdc_batch"])
    assert 1 <= new_runs <= 3, f"the restart re-launched old batches: {new_runs} new runs"

    inbox, distinct, pending, leads = _ledger_counts(data_dir)
    assert inbox == distinct > 0, "an event was staged twice"
    assert pending == 0
    assert leads == leads_before + len(new_leads)
    # One sandbox served both daemons: it outlived the killed daemon's code server.
    assert (data_dir / "sandbox.log").read_text().count("sandbox org serving /") == 1
