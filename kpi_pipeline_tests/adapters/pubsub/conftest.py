"""Fixtures for the Pub/Sub protocol tests: a real sandbox gRPC server on a loopback port.

Server and client speak TLS (the sandbox's generated CA), so these tests run the same
transport path a real org needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.sandbox.changelog import InMemoryChangeLog
from kpi_pipeline.sandbox.pubsub_server import RunningPubSubServer, start_pubsub_server
from kpi_pipeline.sandbox.tls import TlsFiles, ensure_tls_files
from kpi_pipeline_tests.support.pubsub import (
    AUTH,
    TENANT_ID,
    TOKEN,
)


@pytest.fixture
def change_log() -> InMemoryChangeLog:
    return InMemoryChangeLog()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The sandbox's CA and server certificate, generated once for the session."""
    return ensure_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def start_server(tls_files: TlsFiles) -> Iterator[Callable[..., RunningPubSubServer]]:
    """Factory: start_server(log, **options) -> a running TLS server, stopped after the test
    (``tls=None`` for plaintext)."""
    servers: list[RunningPubSubServer] = []

    def start(log: InMemoryChangeLog, **options: Any) -> RunningPubSubServer:
        options.setdefault("keepalive_interval_s", 0.2)
        options.setdefault("tls", tls_files)
        server = start_pubsub_server(
            log, token_validator=lambda token: token == TOKEN, tenant_id=TENANT_ID, **options
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def make_client() -> Iterator[Callable[..., PubSubClient]]:
    clients: list[PubSubClient] = []

    def make(server: RunningPubSubServer, **options: Any) -> PubSubClient:
        auth = options.pop("auth", AUTH)
        options.setdefault("backoff_initial_s", 0.05)
        if server.tls is not None:  # trust exactly the sandbox's CA, as a deployment would
            options.setdefault("ca_file", server.tls.ca_file)
        client = PubSubClient(server.target, auth, tls=server.tls is not None, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
