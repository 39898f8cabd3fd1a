"""The JWT provider as the Pub/Sub client's AuthProvider, against the sandbox's gRPC server,
with both sandbox servers sharing one token registry (as `kpi-pipeline sandbox serve` runs them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.sandbox.pubsub_server import RunningPubSubServer, start_pubsub_server
from kpi_pipeline.sandbox.tls import ensure_tls_files
from kpi_pipeline_tests.support.sandbox_org import TENANT_ID, SandboxOrg


@pytest.fixture
def pubsub(org: SandboxOrg) -> Iterator[RunningPubSubServer]:
    # TLS with the same CA as the REST server, as `sandbox serve --tls` and a real org.
    tls = ensure_tls_files(Path(org.ca_file).parent)
    server = start_pubsub_server(
        org.store, token_validator=org.registry.is_valid, tenant_id=TENANT_ID, tls=tls
    )
    try:
        yield server
    finally:
        server.stop(grace=None)


def test_jwt_session_works_on_the_pubsub_api_and_is_renewed_once_expired(
    org: SandboxOrg, pubsub: RunningPubSubServer
) -> None:
    provider = org.jwt_provider()
    client = PubSubClient(pubsub.target, provider, tls=True, ca_file=org.ca_file)
    try:
        assert client.get_topic("/data/LeadChangeEvent").can_subscribe
        first = provider.token().access_token
        org.server.faults.expire_sessions()  # the org ends every session

        assert client.get_topic("/data/TaskChangeEvent").can_subscribe
    finally:
        client.close()
    assert provider.stats.fetches == 2
    assert provider.token().access_token != first
