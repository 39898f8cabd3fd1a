"""SandboxRuntime and ensure_sandbox: real servers on loopback over one store file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import jwt
import pytest

from kpi_pipeline.cdc.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.cdc.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.config import Settings
from kpi_pipeline.sandbox.runtime import (
    SANDBOX_CONSUMER_KEY,
    SandboxRuntime,
    ensure_sandbox,
    read_endpoints,
    shutdown_sandbox,
)
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import INTEGRATION_USER, SandboxStore

TENANT = "00D000000000001AAA"


@pytest.fixture
def runtime(tmp_path: Path):
    store = SandboxStore(tmp_path / "sandbox.db")
    simulate(store, leads=20, days=1, seed=4)
    store.close()
    rt = SandboxRuntime(
        tmp_path / "sandbox.db", access_token="static-tok", tenant_id=TENANT
    ).start()
    yield rt
    rt.stop()


def fetch_events(target: str, token: str, rest_url: str, topic: str, wanted: int) -> list:
    """Subscribe from EARLIEST over plaintext gRPC and collect ``wanted`` events."""
    metadata = (("accesstoken", token), ("instanceurl", rest_url), ("tenantid", TENANT))
    done = threading.Event()

    def requests():
        yield pb2.FetchRequest(
            topic_name=topic, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=wanted
        )
        done.wait(20)

    with grpc.insecure_channel(target) as channel:
        call = pb2_grpc.PubSubStub(channel).Subscribe(requests(), metadata=metadata, timeout=20)
        events = []
        try:
            for response in call:
                events.extend(response.events)
                if len(events) >= wanted:
                    break
        finally:
            done.set()
            call.cancel()
        return events


def rest_get(url: str, token: str):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_runtime_serves_the_store_over_pubsub_and_rest(runtime: SandboxRuntime) -> None:
    events = fetch_events(
        runtime.pubsub_target, "static-tok", runtime.rest_url, "/data/LeadChangeEvent", 3
    )
    assert len(events) == 3 and all(e.event.payload for e in events)
    lead_id = runtime.store.query_records("Lead")[0]["Id"]
    status, body = rest_get(
        f"{runtime.rest_url}/services/data/v64.0/sobjects/Lead/{lead_id}", "static-tok"
    )
    assert status == 200 and body["Id"] == lead_id
    with pytest.raises(urllib.error.HTTPError) as denied:
        rest_get(f"{runtime.rest_url}/services/data/v64.0/sobjects/Lead/{lead_id}", "wrong")
    assert denied.value.code == 401
    with pytest.raises(grpc.RpcError) as refused:
        fetch_events(runtime.pubsub_target, "wrong", runtime.rest_url, "/data/LeadChangeEvent", 1)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_jwt_issued_tokens_work_beside_the_static_one(runtime: SandboxRuntime) -> None:
    assertion = jwt.encode(
        {"iss": SANDBOX_CONSUMER_KEY, "sub": INTEGRATION_USER.email, "aud": runtime.rest_url,
         "exp": int(time.time()) + 120},
        runtime.jwt_private_key_pem, algorithm="RS256",
    )  # fmt: skip
    form = urllib.parse.urlencode(
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    ).encode()
    with urllib.request.urlopen(
        f"{runtime.rest_url}/services/oauth2/token", data=form, timeout=10
    ) as response:
        token = json.loads(response.read())["access_token"]
    # the token the REST server issued is accepted by the Pub/Sub server too (one registry)
    assert (
        len(
            fetch_events(runtime.pubsub_target, token, runtime.rest_url, "/data/TaskChangeEvent", 1)
        )
        == 1
    )


def test_runtime_endpoints_need_start(tmp_path: Path) -> None:
    rt = SandboxRuntime(tmp_path / "s.db", access_token="t", tenant_id=TENANT)
    with pytest.raises(RuntimeError, match="start"):
        rt.pubsub_target  # noqa: B018
    with pytest.raises(ValueError, match="access_token"):
        SandboxRuntime(tmp_path / "s.db", access_token="", tenant_id=TENANT)


def test_live_thread_keeps_adding_activity(runtime: SandboxRuntime) -> None:
    before = runtime.store.latest_replay()
    runtime.start_live(seed=1, leads_per_hour=36_000, response_speedup=600, interval_s=0.1)
    assert runtime.store.wait_for_changes(before, timeout=10)
    with pytest.raises(RuntimeError, match="already running"):
        runtime.start_live(seed=1, leads_per_hour=1, response_speedup=1)


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, sandbox_leads_per_day=30, sandbox_live_leads_per_hour=0)


def test_ensure_sandbox_seeds_once_and_is_shared_across_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        endpoints = ensure_sandbox(data_dir, settings=settings_for(data_dir))
        assert ensure_sandbox(data_dir, settings=settings_for(data_dir)) == endpoints
        info = json.loads((data_dir / "sandbox.json").read_text())
        assert (
            info["pubsub_target"] == endpoints.pubsub_target
            and info["rest_url"] == endpoints.rest_url
        )
        assert read_endpoints(data_dir) == endpoints
        store = SandboxStore(data_dir / "sandbox.db")
        seeded = store.latest_replay()
        assert (
            seeded > 0 and len(store.query_records("Lead", include_deleted=True)) == 60
        )  # 2 days x 30
        store.close()
        # another process finds the running sandbox instead of starting a second one
        child = textwrap.dedent(
            f"""
            import json
            from kpi_pipeline.config import Settings
            from kpi_pipeline.sandbox.runtime import ensure_sandbox
            e = ensure_sandbox({str(data_dir)!r}, settings=Settings(data_dir={str(data_dir)!r}))
            print(json.dumps([e.pubsub_target, e.rest_url]))
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True
        )
        assert json.loads(out.stdout) == [endpoints.pubsub_target, endpoints.rest_url]
        store = SandboxStore(data_dir / "sandbox.db")
        assert store.latest_replay() == seeded  # not seeded twice
        store.close()
    finally:
        shutdown_sandbox(data_dir)
    assert not (data_dir / "sandbox.json").exists() and read_endpoints(data_dir) is None


def test_stale_endpoints_file_is_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = {"pid": 999_999_999, "pubsub_target": "127.0.0.1:1", "rest_url": "http://127.0.0.1:1",
             "access_token": "x", "tenant_id": TENANT}  # fmt: skip
    (data_dir / "sandbox.json").write_text(json.dumps(stale))
    assert read_endpoints(data_dir) is None
    try:
        endpoints = ensure_sandbox(data_dir, settings=settings_for(data_dir))
        assert endpoints.pubsub_target != "127.0.0.1:1"
        assert read_endpoints(data_dir) == endpoints
    finally:
        shutdown_sandbox(data_dir)
