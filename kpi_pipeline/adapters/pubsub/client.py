"""Pub/Sub API client: bounded, flow-controlled drains of a CDC channel (one per sensor tick).

``PubSubClient.fetch`` opens Subscribe, keeps at most 100 events outstanding, returns when
it has enough events, its time is up, or the channel is caught up, and survives transient
stream failures by reopening from the last replay id it received, so nothing is lost or
duplicated. Replay ids stay opaque bytes throughout.

One open Subscribe call is ``subscribe_stream``, one stream drained by a fetch is ``fetch``,
and the CA file TLS trusts is read by ``ca_file``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import grpc

from kpi_pipeline.adapters.pubsub.ca_file import read_ca_file
from kpi_pipeline.adapters.pubsub.errors import error_from_rpc, tls_failure
from kpi_pipeline.adapters.pubsub.fetch import (
    Drain,
    FetchResult,
    Preset,
    drain_stream,
    start_drain,
)
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.adapters.pubsub.subscribe_stream import (
    FetchRequests,
    StreamClosed,
    SubscribeStream,
    backoff_delay,
)
from kpi_pipeline.core.checks import positive
from kpi_pipeline.core.errors import (
    PubSubAuthError,
    PubSubError,
    ServiceUnavailableError,
    TopicNotFoundError,
    UnknownSchemaError,
)
from kpi_pipeline.telemetry.metrics import record_error

# Transport keepalive catches half-open TCP connections long before the stall watchdog.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # 100 events of up to 1 MB each can arrive in one FetchResponse.
    ("grpc.max_receive_message_length", 128 * 1024 * 1024),
)


class AuthProvider(Protocol):
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """(("accesstoken", ...), ("instanceurl", ...), ("tenantid", ...)) for every call."""

    def invalidate(self) -> None:
        """Forget the current token; the next metadata() fetches a fresh one."""


@dataclass(frozen=True)
class TopicInfo:
    topic_name: str
    tenant_guid: str
    can_publish: bool
    can_subscribe: bool
    schema_id: str
    rpc_id: str


class PubSubClient:
    """Client of ``eventbus.v1.PubSub`` (Salesforce or the sandbox server)."""

    def __init__(
        self,
        target: str,
        auth: AuthProvider,
        *,
        tls: bool,
        stall_timeout_s: float = 300.0,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
        max_reconnects: int = 5,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        call_timeout_s: float = 30.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``tls`` with ``ca_file``: trust only the PEM CA certificates in that file (the
        sandbox's ``sandbox_ca.pem``, a corporate proxy's CA); without it, the system's."""
        self.target = target
        self.auth = auth
        self.stall_timeout_s = positive("stall_timeout_s", stall_timeout_s)
        self.max_reconnects = max_reconnects
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.call_timeout_s = call_timeout_s
        options = list(channel_options)
        self.ca_file = str(ca_file) if ca_file is not None else None
        if ca_file is not None and not tls:
            raise ValueError(
                f"a CA file ({ca_file}) was given for a plaintext connection to {target}; "
                "enable TLS (KPI_PUBSUB_TLS=true) or drop KPI_PUBSUB_CA_FILE"
            )
        self._tls = tls
        if tls:
            roots = read_ca_file(ca_file) if ca_file is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = pb2_grpc.PubSubStub(self._channel)
        self._schemas: dict[str, str] = {}
        self._schema_lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PubSubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- unary calls --------------------------------------------------------------------
    def _unary(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> object:
        """One call; on UNAUTHENTICATED the token is invalidated and the call retried once."""
        for attempt in range(2):
            try:
                return method(request, metadata=self.auth.metadata(), timeout=self.call_timeout_s)
            except grpc.RpcError as exc:
                error = self._translate(error_from_rpc(exc))
                if isinstance(error, PubSubAuthError) and attempt == 0:
                    self.auth.invalidate()
                    continue
                raise error from exc
        raise AssertionError("unreachable")

    def _translate(self, error: PubSubError) -> PubSubError:
        """A failed TLS handshake becomes a ``PubSubTlsError`` naming the CA file to fix."""
        if not self._tls:
            return error
        return tls_failure(error, target=self.target, ca_file=self.ca_file)

    def get_schema(self, schema_id: str) -> str:
        """Avro schema JSON of a schema id (cached per id: ids are immutable)."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        try:
            info = self._unary(self._stub.GetSchema, pb2.SchemaRequest(schema_id=schema_id))
        except TopicNotFoundError as exc:
            raise UnknownSchemaError(
                f"schema id {schema_id!r} is unknown to the server at {self.target}: {exc.message}",
                grpc_code=exc.grpc_code,
                error_code=exc.error_code,
                rpc_id=exc.rpc_id,
            ) from exc
        with self._schema_lock:
            self._schemas[schema_id] = info.schema_json
        return info.schema_json

    def get_topic(self, channel: str) -> TopicInfo:
        info = self._unary(self._stub.GetTopic, pb2.TopicRequest(topic_name=channel))
        # TopicInfo is the reply's fields, by the same names.
        return TopicInfo(**{field.name: getattr(info, field.name) for field in fields(TopicInfo)})

    # -- fetch --------------------------------------------------------------------------
    def fetch(
        self,
        channel: str,
        *,
        replay_id: bytes | None,
        preset: Preset,
        max_events: int,
        max_seconds: float,
        idle_return_s: float = 1.0,
    ) -> FetchResult:
        """Drain up to `max_events` from `channel` within `max_seconds` (see module doc).

        Raises ``ReplayIdInvalidError`` (restart elsewhere), ``PubSubAuthError``,
        ``TopicNotFoundError``, or the last transient error once reconnects are exhausted.
        """
        drain = start_drain(channel, replay_id, preset, max_events, max_seconds, idle_return_s)
        failures = 0
        auth_retried = False
        while not drain.done:
            received_before = len(drain.result.events) + drain.result.keepalives
            try:
                drain_stream(drain, self.open_subscribe, self.stall_timeout_s)
            except (PubSubError, StreamClosed) as exc:
                error = exc if isinstance(exc, PubSubError) else None
                if isinstance(error, PubSubAuthError) and not auth_retried:
                    auth_retried = True
                    self.auth.invalidate()
                    continue
                if error is not None and not error.transient:
                    raise
                record_error("cdc_stream")
                progressed = len(drain.result.events) + drain.result.keepalives > received_before
                failures = 0 if progressed else failures + 1
                if failures > self.max_reconnects:
                    raise error or ServiceUnavailableError(
                        f"Subscribe to {channel} kept closing without delivering anything "
                        f"({failures} times); check the server at {self.target}"
                    ) from exc
                if not self._backoff(drain, failures):
                    break  # the time budget ran out while waiting: return what arrived
                drain.result.reconnects += 1
        return drain.result

    def _backoff(self, drain: Drain, failures: int) -> bool:
        """Sleep before reopening; False when the time budget does not allow another try."""
        delay = backoff_delay(failures, self.backoff_initial_s, self.backoff_max_s)
        if time.monotonic() + delay >= drain.deadline:
            return False
        time.sleep(delay)
        return True

    def open_subscribe(self, first: pb2.FetchRequest) -> SubscribeStream:
        """Open a Subscribe call whose first FetchRequest (topic, preset, replay id) is ``first``."""
        requests = FetchRequests()
        requests.send(first)
        call = self._stub.Subscribe(iter(requests), metadata=self.auth.metadata())
        return SubscribeStream(requests, call, self._translate)
