"""Our client's TLS path against the sandbox serving TLS: trust by CA file, and clear errors
naming the file to fix when the CA does not match or cannot be read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.core.errors import PubSubTlsError
from kpi_pipeline.sandbox.runtime import SandboxRuntime
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore
from kpi_pipeline.sandbox.tls import CA_FILE, ca_pinned_session, ensure_tls_files
from kpi_pipeline_tests.support.pubsub import AUTH, TENANT_ID, add_lead, now_ms

LEADS = "/data/LeadChangeEvent"


def test_subscribe_and_get_schema_over_tls_trusting_the_ca_file(
    change_log, start_server, make_client
) -> None:
    for n in range(1, 4):
        add_lead(change_log, n, City="Lyon")
    server = start_server(change_log)
    assert server.tls is not None
    client = make_client(server)
    assert client.ca_file == str(server.tls.ca_file)
    result = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5)
    events = [EventDecoder(client.get_schema).decode(raw) for raw in result.events]
    assert [e.fields["Address"]["City"] for e in events] == ["Lyon"] * 3


def test_a_ca_that_did_not_sign_the_server_names_the_file_and_fails_at_once(
    change_log, start_server, tmp_path: Path
) -> None:
    add_lead(change_log, 1)
    server = start_server(change_log)
    other_ca = ensure_tls_files(tmp_path / "other").ca_file
    client = PubSubClient(server.target, AUTH, tls=True, ca_file=other_ca, backoff_initial_s=0.05)
    started = time.monotonic()
    with pytest.raises(PubSubTlsError) as failed:
        client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=1, max_seconds=20)
    # Not retried as a transient outage: a handshake that failed once fails every time.
    assert time.monotonic() - started < 10
    message = str(failed.value)
    assert str(other_ca) in message and "KPI_PUBSUB_CA_FILE" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    with pytest.raises(PubSubTlsError, match=str(other_ca)):
        client.get_topic(LEADS)
    client.close()


def test_without_a_ca_file_the_system_trust_store_is_named(change_log, start_server) -> None:
    server = start_server(change_log)
    with (
        PubSubClient(server.target, AUTH, tls=True) as client,
        pytest.raises(PubSubTlsError, match="system's CA certificates"),
    ):
        client.get_topic(LEADS)


def test_tls_client_against_a_plaintext_server_fails_clearly(
    change_log, start_server, tls_files
) -> None:
    server = start_server(change_log, tls=None)
    with (
        PubSubClient(server.target, AUTH, tls=True, ca_file=tls_files.ca_file) as client,
        pytest.raises(PubSubTlsError, match="speaks TLS"),
    ):
        client.get_topic(LEADS)


def test_unreadable_or_non_pem_ca_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=f"cannot read the CA file {missing}"):
        PubSubClient("127.0.0.1:1", AUTH, tls=True, ca_file=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"CA file {garbage} .* holds no PEM certificate"):
        PubSubClient("127.0.0.1:1", AUTH, tls=True, ca_file=garbage)
    ca = ensure_tls_files(tmp_path).ca_file
    with pytest.raises(ValueError, match="plaintext connection"):
        PubSubClient("127.0.0.1:1", AUTH, tls=False, ca_file=ca)


def test_tls_files_are_reused_and_regenerated_when_broken(tmp_path: Path) -> None:
    first = ensure_tls_files(tmp_path)
    ca = first.ca_file.read_bytes()
    assert first.key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_tls_files(tmp_path).ca_file.read_bytes() == ca  # clients keep trusting it
    first.cert_file.write_text("truncated")
    assert ensure_tls_files(tmp_path).ca_file.read_bytes() != ca


def test_runtime_serves_rest_over_https_with_the_same_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SandboxStore(tmp_path / "sandbox.db")
    simulate(store, leads=3, days=1, seed=1)
    store.close()
    with SandboxRuntime(
        tmp_path / "sandbox.db", access_token="tok", tenant_id=TENANT_ID, tls_dir=tmp_path
    ) as runtime:
        endpoints = runtime.endpoints
        assert endpoints.ca_file == str((tmp_path / CA_FILE).resolve())
        assert endpoints.rest_url.startswith("https://")
        url = f"{endpoints.rest_url}/services/data/v64.0/query"
        headers = {"Authorization": "Bearer tok"}
        ok = requests.get(url, params={"q": "SELECT Id FROM Lead"}, headers=headers,
                          verify=endpoints.ca_file, timeout=10)  # fmt: skip
        assert ok.status_code == 200 and ok.json()["totalSize"] == 3
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, headers=headers, timeout=10)  # system CAs: not trusted
        # A failed handshake does not take the server down.
        again = requests.get(url, params={"q": "SELECT Id FROM Lead"}, headers=headers,
                             verify=endpoints.ca_file, timeout=10)  # fmt: skip
        assert again.status_code == 200
        # The pipeline's session trusts the CA even where the environment names another
        # bundle (plain requests would let REQUESTS_CA_BUNDLE override session.verify).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi_like_bundle(tmp_path))
        monkeypatch.setenv("CURL_CA_BUNDLE", certifi_like_bundle(tmp_path))
        session = ca_pinned_session(endpoints.ca_file)
        pinned = session.get(url, params={"q": "SELECT Id FROM Lead"}, headers=headers, timeout=10)
        assert pinned.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            ca_pinned_session(ensure_tls_files(tmp_path / "other").ca_file).get(url, timeout=10)


def certifi_like_bundle(tmp_path: Path) -> str:
    """A CA bundle without the sandbox's CA (another CA's certificate)."""
    return str(ensure_tls_files(tmp_path / "unrelated").ca_file)


def test_contact_with_two_addresses_on_its_custom_channel_over_tls(
    change_log, start_server, make_client
) -> None:
    """End to end through the gRPC server: the second Address is a named reference in the
    schema GetSchema serves, and the changed-field bitmap on it decodes to its children."""
    header = {"entityName": "Contact", "recordIds": ["003000000000001AAA"],
              "changeType": "UPDATE", "commitTimestamp": now_ms(),
              "changedFields": ["OtherAddress.City", "OtherAddress.Country"]}  # fmt: skip
    change_log.append("Contact", header, {"OtherAddress": {"City": "Oslo", "Country": "NO"}})
    add_lead(change_log, 2)  # not on the Contact channel
    client = make_client(start_server(change_log))
    result = client.fetch(
        "/data/Contacts__chn", replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5
    )
    assert len(result.events) == 1
    event = EventDecoder(client.get_schema).decode(result.events[0])
    assert event.header.changed_fields == ("OtherAddress.City", "OtherAddress.Country")
    assert event.fields == {"OtherAddress": {"City": "Oslo", "Country": "NO"}}
