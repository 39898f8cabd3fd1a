"""End to end with real processes: dagster-daemon + code server + run workers + sandbox org.

The daemon evaluates cdc_sensor against the embedded sandbox (its own process, started by
the first code server and outliving it), launches process_cdc_batch runs, and commits the cursor. We kill it hard and
start it again against the same instance storage (SQLite, and PostgreSQL through
dagster-postgres): the cursor must survive, keep advancing, and nothing may be staged or
launched twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kpi_pipeline.core.cursor import SensorCursor
from kpi_pipeline_tests.support.harness import (
    check_executions,
    daemon_env,
    instance_state,
    kill,
    read_progress,
    start_daemon,
)
from kpi_pipeline_tests.support.harness import wait_for_state as _wait_for
from kpi_pipeline_tests.support.harness import write_instance_yaml as _write_instance_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


def _wait_for_check(env: dict, asset: str, check: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = check_executions(env, asset, check)
        if any(s in ("SUCCEEDED", "FAILED") for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(2)


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


# Generous: on a loaded 2-core CI machine a phase has been seen to need over 240 s (the
# half-hourly ledger_snapshot and the freshness checks' first run share the two run slots).
PHASE_TIMEOUT_S = 480


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_daemon_drains_sandbox_and_cursor_survives_restart(
    tmp_path, storage, make_postgres_db, stop_sandbox
):
    postgres_url = make_postgres_db() if storage == "postgres" else None
    home = tmp_path / "dagster_home"
    _write_instance_yaml(home, postgres_url)
    data_dir = tmp_path / "kpi"
    env = daemon_env(home, data_dir, KPI_SANDBOX_SEED="11", KPI_SANDBOX_LEADS_PER_DAY="20")
    log_path = tmp_path / "daemon.log"
    # Create the instance storage before the daemon starts: two processes initialising the
    # same fresh SQLite storage at once can both stamp its alembic version table.
    assert instance_state(env)["runs"] == []

    # Phase 1: the daemon drains the seeded history; stop it hard once everything settled:
    # every org change staged and processed (not only a pause between two batches, when the
    # next batch's run may be launching as the kill lands).
    daemon = start_daemon(env, log_path)
    try:
        first = _wait_for(
            env,
            lambda s: s["cursor"] and _settled(s) and read_progress(data_dir).caught_up,
            PHASE_TIMEOUT_S,
            log_path,
        )
        # freshness_checks_sensor runs by default: its first tick evaluates every freshness
        # check (the KPI partitions are stale in a fresh deployment, so those fail).
        freshness = _wait_for_check(env, "kpi_ttfr_overall", "freshness_check", 120)
        ledger_freshness = check_executions(env, "lead_ledger", "freshness_check")
    finally:
        kill(daemon)
    assert freshness and freshness[0] in ("SUCCEEDED", "FAILED"), freshness
    assert ledger_freshness, "lead_ledger's freshness check was never evaluated"
    positions_before = _replay_positions(first["cursor"])
    assert positions_before, first
    leads_before = _ledger_counts(data_dir)[3]

    # While it is down, the org changes. Phase 2: a new daemon resumes from the stored cursor.
    new_leads = _add_leads(data_dir, 3)
    daemon = start_daemon(env, log_path)
    try:
        second = _wait_for(
            env,
            lambda s: (
                _replay_positions(s["cursor"]).get("/data/LeadChangeEvent", 0)
                > positions_before["/data/LeadChangeEvent"]
                and _settled(s)
                and _ledger_counts(data_dir)[2] == 0
            ),
            PHASE_TIMEOUT_S,
            log_path,
        )
    finally:
        kill(daemon)

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
