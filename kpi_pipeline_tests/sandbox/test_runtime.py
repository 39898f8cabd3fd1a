"""SandboxRuntime and ensure_sandbox: real servers on loopback over one store file."""

from __future__ import annotations

import json
import socket
import ssl
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

from kpi_pipeline import wiring
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.config import Settings
from kpi_pipeline.sandbox.runtime import (
    SANDBOX_CONSUMER_KEY,
    SandboxRuntime,
    SandboxStartError,
    ensure_sandbox,
    read_endpoints,
    shutdown_sandbox,
)
from kpi_pipeline.sandbox.runtime.probes import accepts
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


def fetch_events(rt: SandboxRuntime, token: str, topic: str, wanted: int) -> list:
    """Subscribe from EARLIEST over gRPC with TLS (trusting the runtime's CA, the runtime's
    default) and collect ``wanted`` events."""
    metadata = (("accesstoken", token), ("instanceurl", rt.rest_url), ("tenantid", TENANT))
    done = threading.Event()

    def requests():
        yield pb2.FetchRequest(
            topic_name=topic, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=wanted
        )
        done.wait(20)

    assert rt.tls is not None, "SandboxRuntime serves TLS by default"
    credentials = grpc.ssl_channel_credentials(rt.tls.ca_file.read_bytes())
    with grpc.secure_channel(rt.pubsub_target, credentials) as channel:
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


def _https(rt: SandboxRuntime) -> ssl.SSLContext:
    assert rt.tls is not None, "SandboxRuntime serves TLS by default"
    return ssl.create_default_context(cafile=str(rt.tls.ca_file))


def rest_get(rt: SandboxRuntime, path: str, token: str):
    request = urllib.request.Request(
        f"{rt.rest_url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10, context=_https(rt)) as response:
        return response.status, json.loads(response.read())


def test_runtime_serves_the_store_over_pubsub_and_rest(runtime: SandboxRuntime) -> None:
    assert runtime.rest_url.startswith("https://")
    events = fetch_events(runtime, "static-tok", "/data/LeadChangeEvent", 3)
    assert len(events) == 3 and all(e.event.payload for e in events)
    lead_id = runtime.store.query_records("Lead")[0]["Id"]
    status, body = rest_get(runtime, f"/services/data/v64.0/sobjects/Lead/{lead_id}", "static-tok")
    assert status == 200 and body["Id"] == lead_id
    with pytest.raises(urllib.error.HTTPError) as denied:
        rest_get(runtime, f"/services/data/v64.0/sobjects/Lead/{lead_id}", "wrong")
    assert denied.value.code == 401
    with pytest.raises(grpc.RpcError) as refused:
        fetch_events(runtime, "wrong", "/data/LeadChangeEvent", 1)
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
        f"{runtime.rest_url}/services/oauth2/token", data=form, timeout=10, context=_https(runtime)
    ) as response:
        token = json.loads(response.read())["access_token"]
    # the token the REST server issued is accepted by the Pub/Sub server too (one registry)
    assert len(fetch_events(runtime, token, "/data/TaskChangeEvent", 1)) == 1


def test_runtime_endpoints_need_start(tmp_path: Path) -> None:
    rt = SandboxRuntime(tmp_path / "s.db", access_token="t", tenant_id=TENANT)
    with pytest.raises(RuntimeError, match="start"):
        rt.pubsub_target  # noqa: B018
    with pytest.raises(ValueError, match="access_token"):
        SandboxRuntime(tmp_path / "s.db", access_token="", tenant_id=TENANT)
    with pytest.raises(ValueError, match="tls_dir"):
        SandboxRuntime(
            tmp_path / "s.db", access_token="t", tenant_id=TENANT, tls_dir=tmp_path, plaintext=True
        )


def test_runtime_is_plaintext_only_when_asked(tmp_path: Path) -> None:
    """TLS by default (the CA beside the store); plaintext=True is the explicit way out."""
    with SandboxRuntime(tmp_path / "tls.db", access_token="t", tenant_id=TENANT) as rt:
        assert rt.endpoints.ca_file == str((tmp_path / "sandbox_ca.pem").resolve())
        assert rt.rest_url.startswith("https://")
    with SandboxRuntime(
        tmp_path / "plain.db", access_token="t", tenant_id=TENANT, plaintext=True
    ) as rt:
        assert rt.endpoints.ca_file is None and rt.rest_url.startswith("http://")


def test_live_thread_keeps_adding_activity(runtime: SandboxRuntime) -> None:
    before = runtime.store.latest_replay()
    runtime.start_live(seed=1, leads_per_hour=36_000, response_speedup=600, interval_s=0.1)
    assert runtime.store.wait_for_changes(before, timeout=10)
    with pytest.raises(RuntimeError, match="already running"):
        runtime.start_live(seed=1, leads_per_hour=1, response_speedup=1)


def settings_for(data_dir: Path, **overrides) -> Settings:
    return Settings(
        data_dir=data_dir, sandbox_leads_per_day=30, sandbox_live_leads_per_hour=0, **overrides
    )


def registered_pid(data_dir: Path) -> int:
    return json.loads((data_dir / "sandbox.json").read_text())["pid"]


def serve_processes(data_dir: Path) -> list[int]:
    """Pids of `sandbox serve` processes over this data dir's store (from /proc)."""
    store = str(data_dir.resolve() / "sandbox.db").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and store in argv and _running(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def ensure_in_child(data_dir: Path, **settings) -> subprocess.Popen:
    """Another process calls ensure_sandbox, prints what it got, and exits."""
    code = textwrap.dedent(
        f"""
        import json
        from kpi_pipeline.config import Settings
        from kpi_pipeline.sandbox.runtime import ensure_sandbox
        settings = Settings(data_dir={str(data_dir)!r}, sandbox_leads_per_day=30,
                            sandbox_live_leads_per_hour=0, **{settings!r})
        e = ensure_sandbox({str(data_dir)!r}, settings=settings)
        pid = json.load(open({str(data_dir / "sandbox.json")!r}))["pid"]
        print(json.dumps([e.pubsub_target, e.rest_url, pid]))
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def child_result(child: subprocess.Popen) -> list:
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return json.loads(out)


def get_topic(endpoints) -> pb2.TopicInfo:
    """GetTopic over TLS, trusting only the CA file the sandbox registered."""
    metadata = (("accesstoken", endpoints.access_token), ("instanceurl", endpoints.rest_url),
                ("tenantid", endpoints.tenant_id))  # fmt: skip
    credentials = grpc.ssl_channel_credentials(Path(endpoints.ca_file).read_bytes())
    with grpc.secure_channel(endpoints.pubsub_target, credentials) as channel:
        return pb2_grpc.PubSubStub(channel).GetTopic(
            pb2.TopicRequest(topic_name="/data/LeadChangeEvent"), metadata=metadata, timeout=10
        )


def test_sandbox_outlives_the_process_that_started_it_and_is_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        first = ensure_in_child(data_dir)
        target, rest_url, pid = child_result(first)
        # The starter has exited; its sandbox is a process of its own and still serves.
        assert pid != first.pid and serve_processes(data_dir) == [pid]
        endpoints = read_endpoints(data_dir)
        assert endpoints is not None and (endpoints.pubsub_target, endpoints.rest_url) == (
            target,
            rest_url,
        )
        # The pipeline's sandbox speaks TLS like a real org, with the CA in the data dir.
        assert endpoints.ca_file == str((data_dir / "sandbox_ca.pem").resolve())
        assert endpoints.rest_url.startswith("https://127.0.0.1:")
        assert get_topic(endpoints).can_subscribe
        info = json.loads((data_dir / "sandbox.json").read_text())
        assert info["jwt_consumer_key"] == SANDBOX_CONSUMER_KEY
        assert Path(info["jwt_private_key_file"]).stat().st_mode & 0o777 == 0o600
        store = SandboxStore(data_dir / "sandbox.db")
        seeded = store.latest_replay()
        assert seeded > 0
        assert len(store.query_records("Lead", include_deleted=True)) == 60  # 2 days x 30
        store.close()
        # A second process, and this one, reuse it: same endpoints, same pid, not re-seeded.
        assert child_result(ensure_in_child(data_dir)) == [target, rest_url, pid]
        assert ensure_sandbox(data_dir, settings=settings_for(data_dir)) == endpoints
        assert registered_pid(data_dir) == pid and serve_processes(data_dir) == [pid]
        store = SandboxStore(data_dir / "sandbox.db")
        assert store.latest_replay() == seeded
        store.close()
    finally:
        stopped = shutdown_sandbox(data_dir)
    assert stopped and serve_processes(data_dir) == []
    assert not (data_dir / "sandbox.json").exists() and read_endpoints(data_dir) is None
    assert "sandbox: stopping" in (data_dir / "sandbox.log").read_text()
    assert shutdown_sandbox(data_dir) is False  # nothing left to stop


def test_concurrent_callers_start_one_sandbox(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        children = [ensure_in_child(data_dir) for _ in range(3)]
        results = [child_result(child) for child in children]
        assert results[0] == results[1] == results[2]
        assert serve_processes(data_dir) == [results[0][2]]
        log_text = (data_dir / "sandbox.log").read_text()
        assert log_text.count("sandbox org serving /") == 1 and log_text.count("seeded") == 1
        assert "names a live sandbox" not in log_text  # one serve process was ever started
    finally:
        shutdown_sandbox(data_dir)
    assert serve_processes(data_dir) == []


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


def test_idle_sandbox_exits_once_its_parent_is_gone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        # Started by this (living) process: idle alone does not stop it.
        ensure_sandbox(data_dir, settings=settings_for(data_dir, sandbox_idle_exit_seconds=0.5))
        time.sleep(1.5)
        assert read_endpoints(data_dir) is not None
    finally:
        shutdown_sandbox(data_dir)
    try:
        _, _, pid = child_result(ensure_in_child(data_dir, sandbox_idle_exit_seconds=1.5))
        endpoints = read_endpoints(data_dir)
        assert endpoints is not None
        # Its parent is gone, but requests keep arriving: it stays.
        for _ in range(8):
            assert get_topic(endpoints).topic_name == "/data/LeadChangeEvent"
            time.sleep(0.4)
        assert registered_pid(data_dir) == pid and serve_processes(data_dir) == [pid]
        # No more requests: it exits by itself and removes its registration.
        deadline = time.monotonic() + 15
        while serve_processes(data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert serve_processes(data_dir) == []
        assert not (data_dir / "sandbox.json").exists()
        assert "is gone" in (data_dir / "sandbox.log").read_text()
    finally:
        shutdown_sandbox(data_dir)


def test_a_sandbox_that_cannot_start_names_its_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "sandbox.db").mkdir(parents=True)  # a directory where the store should be
    with pytest.raises(SandboxStartError, match=r"sandbox\.log"):
        ensure_sandbox(data_dir, settings=settings_for(data_dir))
    assert serve_processes(data_dir) == [] and not (data_dir / "sandbox.json").exists()


def test_wiring_reconnects_when_the_sandbox_is_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = settings_for(data_dir)
    wiring.reset_cache()
    try:
        client = wiring.pubsub_client(settings)
        rest = wiring.salesforce_rest(settings)
        assert client.get_topic("/data/LeadChangeEvent").can_subscribe
        assert wiring.pubsub_client(settings) is client  # cached while the sandbox answers
        first_pid = registered_pid(data_dir)
        shutdown_sandbox(data_dir)  # as when the sandbox process dies
        time.sleep(wiring.SANDBOX_CHECK_INTERVAL_S)  # checked at most once a second
        again = wiring.pubsub_client(settings)
        assert again is not client and registered_pid(data_dir) != first_pid
        assert again.target == wiring.org_connection(settings).pubsub_target
        assert again.get_topic("/data/LeadChangeEvent").can_subscribe
        assert wiring.salesforce_rest(settings) is not rest
    finally:
        wiring.reset_cache()
        shutdown_sandbox(data_dir)


def test_a_busy_listener_counts_as_alive_and_a_closed_port_does_not() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepts: the queue fills after a connection or two
    port = listener.getsockname()[1]
    queued = []
    try:
        for _ in range(4):
            pending = socket.socket()
            pending.setblocking(False)
            pending.connect_ex(("127.0.0.1", port))
            queued.append(pending)
        assert accepts(f"http://127.0.0.1:{port}", timeout_s=0.2)
    finally:
        for pending in queued:
            pending.close()
        listener.close()
    assert not accepts(f"127.0.0.1:{port}")  # refused: nothing listens
