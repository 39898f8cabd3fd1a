"""Pub/Sub API client: bounded, flow-controlled drains of a CDC channel (one per sensor tick).

``PubSubClient.fetch`` opens Subscribe, keeps at most 100 events outstanding, returns when
it has enough events, its time is up, or the channel is caught up, and survives transient
stream failures by reopening from the last replay id it received, so nothing is lost or
duplicated. Replay ids stay opaque bytes throughout.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import grpc
from cryptography import x509

from kpi_pipeline.adapters.pubsub.errors import error_from_rpc, tls_failure
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.core.errors import (
    PubSubAuthError,
    PubSubError,
    ServiceUnavailableError,
    StreamStalledError,
    TopicNotFoundError,
    UnknownSchemaError,
)
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.telemetry.metrics import record_error

MAX_OUTSTANDING = 100
Preset = Literal["EARLIEST", "LATEST", "CUSTOM"]
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


@dataclass
class FetchResult:
    events: list[RawEvent] = field(default_factory=list)
    # Where the next fetch should resume (CUSTOM): the last event's id, or a later keepalive id.
    latest_replay_id: bytes | None = None
    keepalives: int = 0
    reconnects: int = 0


class StreamClosed(Exception):
    """The server ended the stream without an error status (e.g. idle close)."""


class _Requests:
    """The request side of a Subscribe stream, fed from the draining thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[pb2.FetchRequest | None] = queue.SimpleQueue()

    def send(self, request: pb2.FetchRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb2.FetchRequest]:
        while (request := self._queue.get()) is not None:
            yield request


class SubscribeStream:
    """One open Subscribe call: FetchRequests go out, responses come in via a reader thread.

    Reading with a timeout (``receive``) is what lets callers run a stall watchdog and
    notice a stop request while the stream is quiet.
    """

    def __init__(
        self,
        requests: _Requests,
        call: grpc.Call,
        translate: Callable[[PubSubError], PubSubError] = lambda error: error,
    ) -> None:
        self._requests = requests
        self._call = call
        self._translate = translate
        self._responses: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        reader = threading.Thread(target=_pump, args=(call, self._responses), daemon=True)
        reader.start()

    def send(self, request: pb2.FetchRequest) -> None:
        self._requests.send(request)

    def receive(self, timeout: float) -> pb2.FetchResponse | None:
        """The next response; None after ``timeout`` s of silence.

        Raises the typed error the stream failed with, or ``StreamClosed`` at a clean end.
        """
        try:
            kind, item = self._responses.get(timeout=timeout)
        except queue.Empty:
            return None
        if kind == "error":
            raise self._translate(error_from_rpc(item))  # type: ignore[arg-type]
        if kind == "end":
            raise StreamClosed()
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._requests.close()
        self._call.cancel()


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff before the next reopening (the first retry waits ``initial_s``)."""
    return min(max_s, initial_s * (2 ** max(failures - 1, 0)))


@dataclass
class _Drain:
    """State of one fetch across stream reopenings."""

    channel: str
    max_events: int
    deadline: float
    idle_return_s: float
    result: FetchResult
    preset: int
    replay_id: bytes
    done: bool = False

    @property
    def remaining(self) -> int:
        return self.max_events - len(self.result.events)

    def resume_point(self, replay_id: bytes) -> None:
        """Later reopenings start strictly after this id (CUSTOM)."""
        self.result.latest_replay_id = replay_id
        self.preset = pb2.ReplayPreset.CUSTOM
        self.replay_id = replay_id


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
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        self.target = target
        self.auth = auth
        self.stall_timeout_s = stall_timeout_s
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
        return TopicInfo(
            topic_name=info.topic_name,
            tenant_guid=info.tenant_guid,
            can_publish=info.can_publish,
            can_subscribe=info.can_subscribe,
            schema_id=info.schema_id,
            rpc_id=info.rpc_id,
        )

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
        drain = self._new_drain(channel, replay_id, preset, max_events, max_seconds, idle_return_s)
        failures = 0
        auth_retried = False
        while not drain.done:
            received_before = len(drain.result.events) + drain.result.keepalives
            try:
                self._drain_stream(drain)
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

    def _new_drain(
        self,
        channel: str,
        replay_id: bytes | None,
        preset: Preset,
        max_events: int,
        max_seconds: float,
        idle_return_s: float,
    ) -> _Drain:
        if preset not in ("EARLIEST", "LATEST", "CUSTOM"):
            raise ValueError(f"preset must be EARLIEST, LATEST or CUSTOM, got {preset!r}")
        if preset == "CUSTOM" and not replay_id:
            raise ValueError(
                "preset CUSTOM needs a replay_id (bytes); use EARLIEST or LATEST otherwise"
            )
        if replay_id is not None and not isinstance(replay_id, bytes):
            raise TypeError(f"replay_id must be bytes (opaque), got {type(replay_id).__name__}")
        if max_events < 1 or max_seconds <= 0 or idle_return_s <= 0:
            raise ValueError(
                f"max_events ({max_events}) must be >= 1, max_seconds ({max_seconds}) and "
                f"idle_return_s ({idle_return_s}) > 0"
            )
        return _Drain(
            channel=channel,
            max_events=max_events,
            deadline=time.monotonic() + max_seconds,
            idle_return_s=idle_return_s,
            result=FetchResult(),
            # Enum numbers, never names: a name can silently encode as 0 (LATEST).
            preset=pb2.ReplayPreset.Value(preset),
            replay_id=replay_id if preset == "CUSTOM" and replay_id else b"",
        )

    def _backoff(self, drain: _Drain, failures: int) -> bool:
        """Sleep before reopening; False when the time budget does not allow another try."""
        delay = backoff_delay(failures, self.backoff_initial_s, self.backoff_max_s)
        if time.monotonic() + delay >= drain.deadline:
            return False
        time.sleep(delay)
        return True

    def _drain_stream(self, drain: _Drain) -> None:
        """One Subscribe stream; returns when the drain is done, raises when the stream fails."""
        outstanding = min(MAX_OUTSTANDING, drain.remaining)
        stream = self.open_subscribe(
            pb2.FetchRequest(
                topic_name=drain.channel,
                replay_preset=drain.preset,
                replay_id=drain.replay_id,
                num_requested=outstanding,
            )
        )
        try:
            while True:
                now = time.monotonic()
                if now >= drain.deadline:
                    drain.done = True
                    return
                wait = min(drain.deadline - now, drain.idle_return_s, self.stall_timeout_s)
                response = stream.receive(wait)
                if response is None:
                    if (
                        time.monotonic() < drain.deadline
                        and self.stall_timeout_s < drain.idle_return_s
                    ):
                        raise StreamStalledError(
                            f"no response on {drain.channel} for {self.stall_timeout_s:.1f} s "
                            "(not even a keepalive); the stream is presumed dead"
                        ) from None
                    drain.done = True  # out of time, or quiet for idle_return_s: caught up
                    return
                outstanding = self._on_response(drain, response, outstanding, stream)
                if drain.done:
                    return
        finally:
            stream.close()

    def open_subscribe(self, first: pb2.FetchRequest) -> SubscribeStream:
        """Open a Subscribe call whose first FetchRequest (topic, preset, replay id) is ``first``."""
        requests = _Requests()
        requests.send(first)
        call = self._stub.Subscribe(iter(requests), metadata=self.auth.metadata())
        return SubscribeStream(requests, call, self._translate)

    def _on_response(
        self, drain: _Drain, response: pb2.FetchResponse, outstanding: int, stream: SubscribeStream
    ) -> int:
        result = drain.result
        if not response.events:
            result.keepalives += 1
            if response.latest_replay_id:
                drain.resume_point(response.latest_replay_id)
            # An empty response means nothing is available now: the channel is caught up.
            drain.done = True
            return outstanding
        for consumer in response.events:
            event = consumer.event
            result.events.append(
                RawEvent(
                    channel=drain.channel,
                    replay_id=consumer.replay_id,
                    schema_id=event.schema_id,
                    payload=event.payload,
                    event_id=event.id,
                )
            )
        drain.resume_point(response.events[-1].replay_id)
        outstanding -= len(response.events)
        if drain.remaining <= 0:
            drain.done = True
            return outstanding
        # Top up early (at half the window) so the server never idles at pending=0.
        want = min(MAX_OUTSTANDING, drain.remaining) - outstanding
        if want > 0 and outstanding <= MAX_OUTSTANDING // 2:
            stream.send(pb2.FetchRequest(topic_name=drain.channel, num_requested=want))
            outstanding += want
        return outstanding


def read_ca_file(path: str | os.PathLike[str]) -> bytes:
    """The PEM CA certificates in ``path``; a clear error naming the file when it is missing
    or holds no certificate (gRPC itself would only fail every handshake later)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read the CA file {path} (KPI_PUBSUB_CA_FILE): {exc.strerror}; point it "
            "at a PEM file of the CA certificates that sign the Pub/Sub server's certificate"
        ) from exc
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(
            f"the CA file {path} (KPI_PUBSUB_CA_FILE) holds no PEM certificate ({exc}); it "
            "must contain -----BEGIN CERTIFICATE----- blocks"
        ) from exc
    return data


def _pump(call: Iterator[pb2.FetchResponse], out: queue.SimpleQueue) -> None:
    """Move responses (and the stream's end or error) from gRPC onto a queue."""
    try:
        for response in call:
            out.put(("response", response))
        out.put(("end", None))
    except grpc.RpcError as exc:
        out.put(("error", exc))
