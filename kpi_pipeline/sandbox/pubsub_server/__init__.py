"""The sandbox's Pub/Sub API server: ``eventbus.v1.PubSub`` over a ``ChangeLogSource``.

It speaks the real wire protocol (same proto, Avro payloads, opaque replay ids: 8 bytes by
default, any length with ``replay_id_bytes`` as some orgs issue longer ones) and
reproduces the behaviour a client has to cope with (reference §3 and §7): the three
metadata keys on every call, preset/replay read only from the first FetchRequest,
flow control summed and capped at 100 outstanding, empty keepalives carrying
``latest_replay_id``, idle close, 72 h retention and the real status codes and
``error-code`` / ``rpc-id`` trailers. ``faults`` injects stream resets, server closes
and ``service.unavailable``, and records the highest outstanding amount a client asked for.

Served over TLS (``tls=``, a ``kpi_pipeline.sandbox.tls.TlsFiles``) as the real service
is, or plaintext on loopback for protocol tests that do not care about transport.

Where it lives: ``servicer`` (the RPCs) builds on ``delivery`` (a Subscribe stream's flow
control and sending) and ``servicer_base`` (configuration and per-call checks); ``faults``
holds the injected failures and ``server`` starts it all. This package exposes what callers
start and configure.
"""

from __future__ import annotations

from kpi_pipeline.sandbox.pubsub_server.delivery import MAX_OUTSTANDING
from kpi_pipeline.sandbox.pubsub_server.faults import Faults
from kpi_pipeline.sandbox.pubsub_server.server import (
    SERVER_OPTIONS,
    RunningPubSubServer,
    start_pubsub_server,
)
from kpi_pipeline.sandbox.pubsub_server.servicer import PubSubServicer
from kpi_pipeline.sandbox.pubsub_server.servicer_base import KEEPALIVE_INTERVAL_S, RETENTION_MS

__all__ = [
    "KEEPALIVE_INTERVAL_S",
    "MAX_OUTSTANDING",
    "RETENTION_MS",
    "SERVER_OPTIONS",
    "Faults",
    "PubSubServicer",
    "RunningPubSubServer",
    "start_pubsub_server",
]
