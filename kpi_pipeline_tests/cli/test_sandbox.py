"""`kpi-pipeline sandbox simulate | export | serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpi_pipeline.cli.main import main
from kpi_pipeline.core.events import read_recorded_lines
from kpi_pipeline.sandbox.store import SandboxStore
from kpi_pipeline_tests.support.serve_process import serve


def simulate_store(path: Path, leads: int = 40) -> int:
    return main(
        ["sandbox", "simulate", "--store", str(path), "--leads", str(leads), "--days", "1", "--seed", "2",
         "--start", "2026-01-05T00:00:00Z"]
    )  # fmt: skip


def test_simulate_writes_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = tmp_path / "nested" / "sandbox.db"
    assert simulate_store(store_path) == 0
    out = capsys.readouterr().out
    assert "simulated 40 leads from 2026-01-05T00:00:00Z to 2026-01-06T00:00:00Z" in out
    store = SandboxStore(store_path)
    creates = [
        c for c in store.iter_changes() if c.entity == "Lead" and c.header["changeType"] == "CREATE"
    ]
    assert len(creates) == 40 and len(store.query_records("Lead")) <= 40
    assert f"replay 1..{store.latest_replay()}" in out
    store.close()


def test_simulate_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sandbox", "simulate", "--store", str(tmp_path / "s.db")]
    assert main([*args, "--start", "next tuesday"]) == 2
    assert "--start" in capsys.readouterr().err
    assert main([*args, "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err


def test_export_writes_recorded_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path, out = tmp_path / "s.db", tmp_path / "events.jsonl"
    simulate_store(store_path, leads=15)
    assert (
        main(
            [
                "sandbox",
                "export",
                "--store",
                str(store_path),
                "--out",
                str(out),
                "--channel",
                "/data/SalesKpis__chn",
            ]
        )
        == 0
    )
    events = list(read_recorded_lines(out.read_text().splitlines(), source=str(out)))
    store = SandboxStore(store_path)
    assert (
        len(events) == store.latest_replay()
        and f"wrote {len(events)} change events" in capsys.readouterr().out
    )
    assert {e.channel for e in events} == {"/data/SalesKpis__chn"}
    assert {e.entity for e in events} == {"Lead", "Task", "EmailMessage"}
    store.close()
    assert (
        main(["sandbox", "export", "--store", str(tmp_path / "missing.db"), "--out", str(out)]) == 2
    )
    assert "sandbox simulate --store" in capsys.readouterr().err


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def test_serve_answers_then_exits_on_sigterm(tmp_path: Path) -> None:
    store_path = tmp_path / "s.db"
    simulate_store(store_path, leads=5)
    with serve(store_path, args=("--tenant-id", "00D000000000009AAA")) as org:
        text, proc = org.banner, org.process
        pubsub = re.search(r"pubsub: 127\.0\.0\.1:(\d+)", text)
        rest = re.search(r"rest: http://127\.0\.0\.1:(\d+)", text)
        assert pubsub and rest, text
        assert "access token: tok-123" in text and "tenant id: 00D000000000009AAA" in text
        assert _connects(int(pubsub.group(1))) and _connects(int(rest.group(1)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "sandbox: stopping" in proc.stdout.read()


def test_serve_needs_an_existing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "serve", "--store", str(tmp_path / "nope.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_refuses_bad_registration_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "s.db")
    assert main(["sandbox", "serve", "--store", store, "--seed-leads-per-day", "-1"]) == 2
    assert "--seed-leads-per-day" in capsys.readouterr().err
    simulate_store(tmp_path / "s.db", leads=2)
    assert main(["sandbox", "serve", "--store", store, "--idle-exit-seconds", "-5"]) == 2
    assert "--idle-exit-seconds" in capsys.readouterr().err


def test_registered_serve_seeds_registers_and_refuses_a_second_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    endpoints_file = data_dir / "sandbox.json"
    args = ["sandbox", "serve", "--store", str(data_dir / "sandbox.db"),
            "--endpoints-file", str(endpoints_file), "--seed-leads-per-day", "10"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpi_pipeline.cli.main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "KPI_SANDBOX_ACCESS_TOKEN": "env-token"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not endpoints_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(endpoints_file.read_text())
        # The token came from the environment, not the command line.
        assert info["pid"] == proc.pid and info["access_token"] == "env-token"
        assert _connects(int(info["pubsub_target"].rsplit(":", 1)[1]))
        store = SandboxStore(data_dir / "sandbox.db")
        assert len(store.query_records("Lead", include_deleted=True)) == 20  # 2 days x 10
        store.close()
        # A second serve over the same registration would run two simulators on one store.
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"names a live sandbox (pid {proc.pid}" in err and f"kill {proc.pid}" in err
        assert json.loads(endpoints_file.read_text())["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not endpoints_file.exists()  # removed on exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_tls_speaks_tls_on_both_ports_with_the_ca_it_prints(tmp_path: Path) -> None:
    import requests

    from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
    from kpi_pipeline.adapters.pubsub.client import PubSubClient
    from kpi_pipeline.core.errors import PubSubTlsError, ServiceUnavailableError

    store_path = tmp_path / "s.db"
    simulate_store(store_path, leads=5)
    with serve(store_path, args=["--tls"]) as org:
        assert "gRPC over TLS" in org.banner
        assert org.ca_file == str(tmp_path / "sandbox_ca.pem")
        assert org.rest_url.startswith("https://")
        auth = StaticTokenProvider(org.access_token, org.rest_url, org.tenant_id)
        with PubSubClient(org.pubsub_target, auth, tls=True, ca_file=org.ca_file) as client:
            assert client.get_topic("/data/LeadChangeEvent").can_subscribe
        with (
            PubSubClient(org.pubsub_target, auth, tls=False) as plaintext,
            pytest.raises(ServiceUnavailableError),
        ):
            plaintext.get_topic("/data/LeadChangeEvent")
        with (
            PubSubClient(org.pubsub_target, auth, tls=True) as untrusted,
            pytest.raises(PubSubTlsError),
        ):
            untrusted.get_topic("/data/LeadChangeEvent")

        response = requests.get(
            f"{org.rest_url}/services/data/v64.0/query",
            params={"q": "SELECT Id FROM Lead"},
            headers={"Authorization": f"Bearer {org.access_token}"},
            verify=org.ca_file,
            timeout=10,
        )
        assert response.status_code == 200 and response.json()["totalSize"] == 5


def test_serve_tls_dir_needs_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    simulate_store(tmp_path / "s.db", leads=2)
    args = ["sandbox", "serve", "--store", str(tmp_path / "s.db"), "--tls-dir", str(tmp_path)]
    assert main(args) == 2
    assert "--tls-dir only applies with --tls" in capsys.readouterr().err


def test_serve_issues_replay_ids_of_the_length_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
    from kpi_pipeline.adapters.pubsub.client import PubSubClient

    store_path = tmp_path / "s.db"
    # A window ending now, so its events are inside the bus's retention.
    assert main(["sandbox", "simulate", "--store", str(store_path), "--leads", "3"]) == 0
    args = ["sandbox", "serve", "--store", str(store_path), "--replay-id-bytes", "4"]
    assert main(args) == 2
    assert "--replay-id-bytes must be between 8 and 32" in capsys.readouterr().err
    with serve(store_path, args=["--tls", "--replay-id-bytes", "10"]) as org:
        auth = StaticTokenProvider(org.access_token, org.rest_url, org.tenant_id)
        with PubSubClient(org.pubsub_target, auth, tls=True, ca_file=org.ca_file) as client:
            fetched = client.fetch(
                "/data/ChangeEvents", replay_id=None, preset="EARLIEST", max_events=3,
                max_seconds=10,
            )  # fmt: skip
    assert [len(e.replay_id) for e in fetched.events] == [10, 10, 10]
