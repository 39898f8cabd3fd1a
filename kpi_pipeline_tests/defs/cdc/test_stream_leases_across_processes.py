"""Stream leases across processes: two stream consumers (``stream_consumer``, the StreamWorker of
a ``cdc_stream`` run as a plain process) on one PostgreSQL ledger, the sandbox org shared.

- while both live, exactly one holds every channel, and the standby never holds one;
- SIGKILL of the holder's process group while org activity arrives: the standby takes every
  channel over after the dead holder's lease expired and within the lease time (plus its wait
  interval) of the kill;
- afterwards every org change is staged exactly once (the inbox count equals the org's change
  log), every staged batch is processed, each lead is routed once and the org matches the
  ledger (``harness.check_*``).

Leases are 3 s here so the takeover fits a short test; production's 30 s only changes how long
it takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from kpi_pipeline import wiring
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.config import Settings
from kpi_pipeline.sandbox.runtime import shutdown_sandbox
from kpi_pipeline_tests.support import harness
from kpi_pipeline_tests.support.waiting import poll

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

LEASE_S = 3.0
# The standby retries every third of the lease (StreamWorker._wait_for_leases); a loaded
# 2-core machine adds scheduling delay on top.
TAKEOVER_SLACK_S = LEASE_S / 3 + 3.0


@pytest.fixture
def consumers_env(tmp_path: Path, postgres_url: str) -> Iterator[dict[str, str]]:
    data_dir = tmp_path / "kpi"
    data_dir.mkdir()
    harness.seed_store(data_dir / "sandbox.db", leads=12, days=0.5, seed=41)
    Ledger.from_url(postgres_url).dispose()  # migrated once, before two processes race for it
    env = {
        **os.environ,
        "PYTHONPATH": str(harness.REPO_ROOT),
        "KPI_DATA_DIR": str(data_dir),
        "KPI_LEDGER_URL": postgres_url,
        "KPI_CDC_MODE": "stream",
        "KPI_CDC_STREAM_LEASE_SECONDS": str(LEASE_S),
        "KPI_CDC_STREAM_GENERATION_SECONDS": "600",
        "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
        # Outbox rows the killed holder had claimed are free again 5 s after its last renewal.
        "KPI_WRITEBACK_LEASE_SECONDS": "5",
    }
    yield env
    shutdown_sandbox(data_dir)


def _start(env: dict[str, str], holder: str, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "kpi_pipeline_tests.support.stream_consumer", holder]
    return harness.start_logged(argv, env, log)


def _live_holders(url: str) -> dict[str, str]:
    """channel -> holder of every unexpired lease, by the database's clock."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            c = t.cdc_channel_leases.c
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            rows = conn.execute(sa.select(c.channel, c.holder, c.expires_at)).all()
    finally:
        engine.dispose()
    return {r.channel: r.holder for r in rows if r.expires_at > now}


def _leases(url: str) -> dict[str, tuple[str, datetime, datetime]]:
    ledger = Ledger.from_url(url)
    try:
        return {
            lease.channel: (lease.holder, lease.acquired_at, lease.expires_at)
            for lease in ledger.channel_leases()
        }
    finally:
        ledger.dispose()


def _progress(url: str, data_dir: Path) -> tuple[int, int, int, int]:
    """(org changes, inbox events, staged batches not done, events in done batches)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inbox = conn.execute(sa.select(sa.func.count()).select_from(t.cdc_inbox)).scalar_one()
            b = t.cdc_batches.c
            pending = conn.execute(
                sa.select(sa.func.count()).where(b.status != "done")
            ).scalar_one()
            done_events = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(b.event_count), 0)).where(b.status == "done")
            ).scalar_one()
    except sa.exc.ProgrammingError:  # not migrated yet
        return harness.org_change_count(data_dir), 0, 0, 0
    finally:
        engine.dispose()
    return harness.org_change_count(data_dir), inbox, pending, int(done_events)


def _caught_up(url: str, data_dir: Path) -> bool:
    """Every org change staged once (the inbox is keyed by channel and replay id, and the done
    batches' events add up to it: no batch twice) and nothing left to process."""
    org, inbox, pending, done_events = _progress(url, data_dir)
    return org == inbox == done_events and pending == 0


def _drain_until_empty(env: dict[str, str], logs: list[Path]) -> None:
    keys = ("KPI_DATA_DIR", "KPI_LEDGER_URL", "KPI_WRITEBACK_LEASE_SECONDS")
    with pytest.MonkeyPatch.context() as mp:
        for key in keys:
            mp.setenv(key, env[key])
        wiring.reset_cache()
        settings = Settings()
        try:

            def drained() -> bool:
                wiring.drain_writeback(settings)
                ledger = wiring.ledger(settings)
                with ledger.engine.connect() as conn:
                    c = t.sf_outbox.c
                    left = conn.execute(
                        sa.select(sa.func.count()).where(c.status.in_(["pending", "claimed"]))
                    ).scalar_one()
                if left:
                    time.sleep(1)
                return left == 0

            _wait(drained, 60, "the outbox to drain", logs)
        finally:
            wiring.reset_cache()


def _wait(predicate, timeout: float, what: str, logs: list[Path]):
    value = poll(predicate, timeout, 0.1)
    if value:
        return value
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


@pytest.mark.timeout(240)
def test_one_holder_per_channel_and_kill_9_hands_over_within_the_lease(
    consumers_env: dict[str, str], tmp_path: Path
) -> None:
    url = consumers_env["KPI_LEDGER_URL"]
    data_dir = Path(consumers_env["KPI_DATA_DIR"])
    channels = set(Settings().cdc_channels)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = {"consumer-a": _start(consumers_env, "consumer-a", logs[0])}
    try:
        # The first consumer starts the shared sandbox org and takes every channel; the second
        # starts once it holds them, so the one to kill is known.
        _wait(lambda: _live_holders(url) == dict.fromkeys(channels, "consumer-a"), 90, "a", logs)
        procs["consumer-b"] = _start(consumers_env, "consumer-b", logs[1])
        _wait(lambda: _caught_up(url, data_dir), 90, "the holder to catch up", logs)
        # Exactly one holder per channel, all the time both live (the standby is up and
        # retrying every third of the lease).
        for _ in range(int(3 * LEASE_S / 0.2)):
            assert _live_holders(url) == dict.fromkeys(channels, "consumer-a")
            assert procs["consumer-b"].poll() is None
            time.sleep(0.2)

        base_ms = int(time.time() * 1000) - 3 * 3600 * 1000
        harness.add_wave(data_dir, 1, leads=6, base_ms=base_ms)
        before = _leases(url)
        harness.kill(procs.pop("consumer-a"))
        killed_at = datetime.now(UTC)
        harness.add_wave(data_dir, 2, leads=6, base_ms=base_ms + 3_600_000)

        _wait(
            lambda: _live_holders(url) == dict.fromkeys(channels, "consumer-b"),
            60,
            "takeover",
            logs,
        )
        after = _leases(url)
        for channel in channels:
            holder, acquired_at, _ = after[channel]
            assert holder == "consumer-b"
            dead_expiry = before[channel][2]
            # Never while the dead holder's lease was valid, and within the lease of the kill.
            assert acquired_at >= dead_expiry, (channel, acquired_at, dead_expiry)
            assert acquired_at - killed_at <= timedelta(seconds=LEASE_S + TAKEOVER_SLACK_S), (
                channel,
                acquired_at - killed_at,
            )

        # Everything the org published is staged exactly once and processed.
        _wait(lambda: _caught_up(url, data_dir), 90, "the standby to catch up", logs)
    finally:
        for proc in procs.values():
            harness.kill(proc)

    # The dead holder's outbox claims: in a deployment writeback_sensor's idle drain takes them
    # once their lease ran out; here the same drain, from this process.
    _drain_until_empty(consumers_env, logs)
    outcome = harness.read_outcome(data_dir, url)
    assert outcome.leads >= 12 + 2 * 6 and outcome.routed
    problems = harness.check_routed_at_most_once(outcome) + harness.check_outbox_empty(outcome)
    problems += harness.check_org_equals_ledger(outcome)
    assert not problems, problems
