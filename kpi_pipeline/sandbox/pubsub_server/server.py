"""Starting the Pub/Sub server: a threaded gRPC server, TLS or plaintext, on loopback."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.sandbox.changelog import ChangeLogSource
from kpi_pipeline.sandbox.pubsub_server.faults import Faults
from kpi_pipeline.sandbox.pubsub_server.servicer import PubSubServicer
from kpi_pipeline.sandbox.pubsub_server.servicer_base import KEEPALIVE_INTERVAL_S, RETENTION_MS
from kpi_pipeline.sandbox.stoppable import Stoppable
from kpi_pipeline.sandbox.tls import TlsFiles

# Accept the clients' transport keepalive pings (grpc-core's server default answers pings
# more often than every 5 min without data with GOAWAY "too_many_pings").
SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
)


@dataclass
class RunningPubSubServer(Stoppable):
    port: int
    faults: Faults
    servicer: PubSubServicer
    _server: grpc.Server
    tls: TlsFiles | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 0.5) -> None:
        self._server.stop(grace).wait()


def start_pubsub_server(
    source: ChangeLogSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token_validator: Callable[[str], bool],
    tenant_id: str,
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
    idle_timeout_s: float = 60.0,
    retention_ms: int = RETENTION_MS,
    max_workers: int = 16,
    tls: TlsFiles | None = None,
    replay_id_bytes: int = 8,
) -> RunningPubSubServer:
    """Start a threaded gRPC server (TLS with ``tls``, else plaintext); ``port=0`` picks a
    free ephemeral port."""
    faults = Faults()
    servicer = PubSubServicer(
        source,
        token_validator=token_validator,
        tenant_id=tenant_id,
        keepalive_interval_s=keepalive_interval_s,
        idle_timeout_s=idle_timeout_s,
        retention_ms=retention_ms,
        faults=faults,
        replay_id_bytes=replay_id_bytes,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pubsub"),
        options=SERVER_OPTIONS,
    )
    pb2_grpc.add_PubSubServicer_to_server(servicer, server)
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        credentials = grpc.ssl_server_credentials([tls.server_key_and_chain()])
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot bind the Pub/Sub sandbox server to {host}:{port}; pick a free port")
    server.start()
    return RunningPubSubServer(
        port=bound, faults=faults, servicer=servicer, _server=server, tls=tls
    )
