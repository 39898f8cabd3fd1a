"""`kpi-pipeline web serve` over real HTTP: /readyz names each fault with its reason and turns
200 again after recovery; /status matches the ledger. The org is the sandbox's REST server
(JWT bearer flow with a connected app's key, as a real org) or the embedded sandbox process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.events import replay_id_from_int, replay_id_hex
from kpi_pipeline.core.ledger_rows import FailedEvent
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline_tests.support.metrics_server import (
    WEB_SERVE_COMMAND,
    MetricsServer,
    http_get,
    start_metrics_server,
)
from kpi_pipeline_tests.support.outbox_rows import claim, queue
from kpi_pipeline_tests.support.resync_pipeline import refused_window
from kpi_pipeline_tests.support.sandbox_org import (
    CONSUMER_KEY,
    USERNAME,
    SandboxOrg,
    other_private_key,
    sandbox_org,
)

pytestmark = pytest.mark.integration

LEAD = "/data/LeadChangeEvent"
THRESHOLDS = {
    "KPI_CDC_MODE": "sensor",
    "KPI_CDC_CHANNELS": LEAD,
    "KPI_READY_ORG_PROBE_SECONDS": "0.2",
    "KPI_READY_PROCESSING_LAG_SECONDS": "60",
    "KPI_CDC_PROCESSING_ALERT_SECONDS": "300",
    "KPI_READY_DEAD_LETTER_WINDOW_SECONDS": "3",
    "KPI_READY_OUTBOX_BACKLOG_ROWS": "2",
}


@pytest.fixture
def org(tmp_path: Path) -> Iterator[SandboxOrg]:
    with sandbox_org(tmp_path / "org") as running:
        yield running


@pytest.fixture
def key_file(org: SandboxOrg, tmp_path: Path) -> Path:
    path = tmp_path / "server.key"
    path.write_bytes(org.private_key_pem)
    return path


@pytest.fixture
def server(
    tmp_path: Path, ledger_url: str, org: SandboxOrg, key_file: Path
) -> Iterator[MetricsServer]:
    jwt = {
        "KPI_SALESFORCE_LOGIN_URL": org.url,
        "KPI_SALESFORCE_CLIENT_ID": CONSUMER_KEY,
        "KPI_SALESFORCE_USERNAME": USERNAME,
        "KPI_SALESFORCE_PRIVATE_KEY_FILE": str(key_file),
        # The org answers over HTTPS; a real-org deployment trusts its CA the same way.
        "REQUESTS_CA_BUNDLE": org.ca_file,
    }
    (tmp_path / "metrics").mkdir()
    running = start_metrics_server(
        tmp_path / "metrics",
        ledger_url=ledger_url,
        command=WEB_SERVE_COMMAND,
        extra_env={**THRESHOLDS, **jwt},
    )
    yield running
    running.stop()


def ready(server: MetricsServer) -> tuple[int, dict]:
    status, body = http_get(f"{server.url}/readyz")
    return status, json.loads(body)


def wait_for(
    server: MetricsServer, predicate: Callable[[int, dict], bool], timeout: float = 15.0
) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = ready(server)
        if predicate(status, body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def codes(body: dict) -> set[str]:
    return {reason["code"] for reason in body["reasons"]}


def stage(ledger_url: str, minutes_ago: float, first: int) -> str:
    then = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    ledger = Ledger.from_url(ledger_url, clock=lambda: then)
    try:
        event = RawEvent(LEAD, replay_id_from_int(first), "schema-1", b"\x00", f"e{first}")
        return ledger.stage_batch(LEAD, [event], {"schema-1": '"null"'}).batch_id
    finally:
        ledger.dispose()


def test_each_ledger_fault_is_a_reason_and_recovery_makes_it_ready_again(
    server: MetricsServer, ledger_url: str
) -> None:
    ledger = Ledger.from_url(ledger_url)
    try:
        status, body = wait_for(server, lambda s, _b: s == 200)
        assert (status, body) == (200, {"ready": True, "reasons": []})

        lagging = stage(ledger_url, 2, 1)  # two minutes behind: over the 60 s lag threshold
        status, body = ready(server)
        assert status == 503 and codes(body) == {"processing_lag"}
        assert body["reasons"][0]["threshold"] == 60 and LEAD in body["reasons"][0]["message"]
        ledger.mark_batch_done(lagging, run_id="test", summary={})
        assert ready(server)[0] == 200

        stuck = stage(ledger_url, 10, 2)  # past KPI_CDC_PROCESSING_ALERT_SECONDS
        status, body = ready(server)
        assert status == 503 and codes(body) == {"stuck_batches"}
        ledger.mark_batch_done(stuck, run_id="test", summary={})
        assert ready(server)[0] == 200

        queue(ledger, ["00Q000000000001AAA", "00Q000000000002AAA", "00Q000000000003AAA"])
        status, body = ready(server)
        assert status == 503 and codes(body) == {"outbox_backlog"}
        claims = claim(ledger, 10)
        ledger.confirm_sent(claims[0].token, [(c, {"OwnerId": "005x"}) for c in claims])
        assert ready(server)[0] == 200

        ledger.dead_letter(
            FailedEvent(
                channel=LEAD,
                replay_id=replay_id_from_int(9),
                batch_id=None,
                stage="decode",
                reason="PayloadDecodeError: truncated",
                payload=b"\x02",
            )
        )
        status, body = ready(server)
        assert status == 503 and codes(body) == {"dead_letters"}
        status, body = wait_for(server, lambda s, _b: s == 200)  # the 3 s window passes
        assert status == 200, body
    finally:
        ledger.dispose()


def test_status_matches_the_ledger(server: MetricsServer, ledger_url: str) -> None:
    ledger = Ledger.from_url(ledger_url)
    try:
        ledger.set_replay_id(LEAD, replay_id_from_int(42))
        pending = stage(ledger_url, 0.5, 7)
        queue(ledger, ["00Q000000000001AAA"])
        refused_window(ledger, LEAD, from_replay=40, from_time_ms=None, detail={})
        status, body = http_get(f"{server.url}/status")
        assert status == 200
        snapshot = json.loads(body)
        (channel,) = snapshot["channels"]
        assert channel["channel"] == LEAD
        assert channel["replay_id"] == replay_id_hex(replay_id_from_int(42))
        assert channel["pending_batches"] == len(ledger.pending_batches()) == 1
        assert 25 <= channel["oldest_pending_age_s"] < 120
        assert snapshot["outbox_by_status"] == ledger.outbox_health().by_status
        assert snapshot["outbox_backlog"] == 1
        assert snapshot["open_resync_windows"] == len(ledger.open_resync_windows()) == 1
        assert snapshot["dead_letters_by_reason"] == ledger.dead_letter_counts() == {}
        assert snapshot["policy_version"]  # the packaged policy's version
        assert snapshot["org"]["ok"] is True
        assert snapshot["readiness"]["ready"] is True  # 30 s pending is within the lag limit
        assert pending in {b.batch_id for b in ledger.pending_batches()}
    finally:
        ledger.dispose()


def test_an_org_that_refuses_the_key_or_is_gone_is_named(
    server: MetricsServer, org: SandboxOrg, key_file: Path
) -> None:
    assert wait_for(server, lambda s, _b: s == 200)[0] == 200

    key_file.write_bytes(other_private_key())  # the connected app's certificate no longer matches
    status, body = wait_for(server, lambda s, _b: s == 503)
    assert status == 503 and codes(body) == {"org_auth_failed"}, body
    assert "authentication failed" in body["reasons"][0]["message"]

    key_file.write_bytes(org.private_key_pem)  # the operator puts the right key back
    assert wait_for(server, lambda s, _b: s == 200)[0] == 200

    org.server.stop()
    status, body = wait_for(server, lambda s, _b: s == 503)
    assert status == 503 and codes(body) == {"org_unreachable"}, body


def test_a_stopped_sandbox_org_is_unreachable_until_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded sandbox (what make dev runs): the probe never starts it, so a stopped
    sandbox is reported, and readiness returns once it serves again."""
    from kpi_pipeline.config import Settings
    from kpi_pipeline.sandbox.runtime import ensure_sandbox, shutdown_sandbox

    small = {"KPI_SANDBOX_LEADS_PER_DAY": "5", "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0"}
    for name, value in small.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "kpi_data"  # what start_metrics_server gives the server
    (tmp_path / "metrics").mkdir()
    ensure_sandbox(data_dir, settings=Settings(data_dir=data_dir))
    server = start_metrics_server(
        tmp_path / "metrics", command=WEB_SERVE_COMMAND, extra_env={**THRESHOLDS, **small}
    )
    try:
        assert wait_for(server, lambda s, _b: s == 200)[0] == 200

        shutdown_sandbox(data_dir)
        status, body = wait_for(server, lambda s, _b: s == 503)
        assert status == 503 and codes(body) == {"org_unreachable"}, body
        assert "is not running" in body["reasons"][0]["message"]

        ensure_sandbox(data_dir, settings=Settings(data_dir=data_dir))
        status, body = wait_for(server, lambda s, _b: s == 200)
        assert status == 200, body
    finally:
        server.stop()
        shutdown_sandbox(data_dir)


def test_the_status_command_prints_the_same_snapshot_and_exits_1_when_not_ready(
    tmp_path: Path, ledger_url: str
) -> None:
    import subprocess
    import sys

    from kpi_pipeline_tests.support.metrics_server import metrics_env

    env = {**metrics_env(tmp_path / "metrics", ledger_url), **THRESHOLDS}
    command = [sys.executable, "-m", "kpi_pipeline.cli.main", "status", "--no-org"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    assert snapshot["readiness"] == {"ready": True, "reasons": []}
    assert snapshot["org"] is None and snapshot["channels"][0]["channel"] == LEAD

    stage(ledger_url, 10, 1)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    reasons = json.loads(done.stdout)["readiness"]["reasons"]
    assert [r["code"] for r in reasons] == ["stuck_batches"]
