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
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import NoReturn

import grpc

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.core.errors import (
    AUTH_ERROR,
    REPLAY_CORRUPTED,
    REPLAY_VALIDATION_FAILED,
    REQUESTED_EVENTS_INVALID,
    SERVICE_UNAVAILABLE,
    TOPIC_MISMATCH,
    UnknownSchemaError,
)
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.sandbox.changelog import (
    ALL_ENTITIES,
    ChangeLogSource,
    StoredChange,
    entities_for_channel,
)
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet, encode_change
from kpi_pipeline.sandbox.tls import TlsFiles

MAX_OUTSTANDING = 100
# Accept the clients' transport keepalive pings (grpc-core's server default answers pings
# more often than every 5 min without data with GOAWAY "too_many_pings").
SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
)
RETENTION_MS = 72 * 3600 * 1000
# A real org sends a keepalive on a quiet stream within 270 s; the sandbox does the same by
# default (``keepalive_interval_s``; tests of the protocol use shorter ones).
KEEPALIVE_INTERVAL_S = 270.0
# Longest a delivery thread waits before re-checking that its stream is still open, so a
# stream the client closed frees its worker thread soon, whatever the keepalive interval.
_POLL_S = 0.5
REQUIRED_METADATA = ("accesstoken", "instanceurl", "tenantid")
REPLAY_INVALID_TEXT = (
    "The Replay ID validation failed. Ensure that the replay_id is valid and refers to an "
    "event that is within the retention window."
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    rpc_id: str,
    rpc_type: str,
    error_code: str = "",
) -> NoReturn:
    """Fail the call with the real status, message suffix and trailers (context.abort raises)."""
    trailers = [("rpc-id", rpc_id), ("type", rpc_type)]
    if error_code:
        trailers.append(("error-code", error_code))
    context.set_trailing_metadata(tuple(trailers))
    context.abort(code, f"{message} rpcId: {rpc_id}")
    raise AssertionError("grpc's context.abort returned instead of raising")


@dataclass
class Faults:
    """Fault injection and observations; thread-safe, armed by tests and the simulator."""

    max_outstanding_seen: int = 0
    subscribe_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reset_after: int | None = None
    _close_after: int | None = None
    _unavailable_calls: int = 0
    silent: bool = False

    def reset_stream_after(self, events: int) -> None:
        """After `events` more events are sent, abort the stream with UNAVAILABLE (a network reset)."""
        with self._lock:
            self._reset_after = events

    def close_stream_after(self, events: int) -> None:
        """After `events` more events are sent, end the stream normally (server-side close)."""
        with self._lock:
            self._close_after = events

    def silence_streams(self, silent: bool = True) -> None:
        """Open streams stop sending anything, keepalives included (a half-open connection)."""
        with self._lock:
            self.silent = silent

    def service_unavailable_next(self, calls: int) -> None:
        """The next `calls` RPCs fail with INTERNAL + ``service.unavailable``."""
        with self._lock:
            self._unavailable_calls = calls

    def take_unavailable(self) -> bool:
        with self._lock:
            if self._unavailable_calls > 0:
                self._unavailable_calls -= 1
                return True
            return False

    def observe_outstanding(self, requested_total: int) -> None:
        with self._lock:
            self.max_outstanding_seen = max(self.max_outstanding_seen, requested_total)

    def allow(self, count: int) -> tuple[int, str | None]:
        """How many of `count` events may go out, and the action ('reset'/'close') after them."""
        with self._lock:
            for attr, action in (("_reset_after", "reset"), ("_close_after", "close")):
                budget = getattr(self, attr)
                if budget is not None and count >= budget:
                    setattr(self, attr, None)
                    return budget, action
            for attr in ("_reset_after", "_close_after"):
                if getattr(self, attr) is not None:
                    setattr(self, attr, getattr(self, attr) - count)
            return count, None


class _FlowState:
    """Outstanding events for one Subscribe stream, updated by the request-reader thread."""

    def __init__(self, faults: Faults) -> None:
        self.cond = threading.Condition()
        self.pending = 0
        self.last_activity = time.monotonic()  # last request or response (idle close)
        self.last_response: float | None = None  # keepalive timer; None: none sent yet
        self.error: tuple[grpc.StatusCode, str, str] | None = None
        self.done = False
        self._faults = faults

    def grant(self, num_requested: int) -> None:
        with self.cond:
            self._faults.observe_outstanding(self.pending + num_requested)
            # The real service silently treats more than 100 outstanding as 100.
            self.pending = min(self.pending + num_requested, MAX_OUTSTANDING)
            self.last_activity = time.monotonic()
            self.cond.notify_all()

    def fail(self, code: grpc.StatusCode, message: str, error_code: str) -> None:
        with self.cond:
            self.error = (code, message, error_code)
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


class PubSubServicer(pb2_grpc.PubSubServicer):
    """``eventbus.v1.PubSub`` over a change log (Subscribe, GetSchema, GetTopic)."""

    def __init__(
        self,
        source: ChangeLogSource,
        *,
        token_validator: Callable[[str], bool],
        tenant_id: str,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        idle_timeout_s: float = 60.0,
        retention_ms: int = RETENTION_MS,
        faults: Faults | None = None,
        replay_id_bytes: int = 8,
    ) -> None:
        if not 8 <= replay_id_bytes <= 32:
            raise ValueError(f"replay_id_bytes must be between 8 and 32, got {replay_id_bytes}")
        if keepalive_interval_s <= 0:
            raise ValueError(f"keepalive_interval_s must be > 0, got {keepalive_interval_s}")
        self.replay_id_bytes = replay_id_bytes
        self.source = source
        self.token_validator = token_validator
        self.tenant_id = tenant_id
        self.keepalive_interval_s = keepalive_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.retention_ms = retention_ms
        self.faults = faults or Faults()

    @property
    def schemas(self) -> SchemaSet:
        """The org's schemas, read on every use: an admin may add a custom field meanwhile."""
        return getattr(self.source, "schemas", DEFAULT_SCHEMAS)

    # -- shared checks ------------------------------------------------------------------
    def _check_call(self, context: grpc.ServicerContext, rpc_id: str, rpc_type: str) -> None:
        metadata = dict(context.invocation_metadata())
        missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
        if missing:
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"Missing required metadata {missing}: send accesstoken, instanceurl and "
                "tenantid on every call.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
                error_code=AUTH_ERROR,
            )
        if metadata["tenantid"] != self.tenant_id or not self.token_validator(
            metadata["accesstoken"]
        ):
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "The session is invalid or expired, or the tenant id does not match the org. "
                "Get a new access token and retry.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
                error_code=AUTH_ERROR,
            )
        if self.faults.take_unavailable():
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                "The service is unavailable. Try again later.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
                error_code=SERVICE_UNAVAILABLE,
            )

    def _entities(
        self, topic: str, context: grpc.ServicerContext, rpc_id: str, rpc_type: str
    ) -> tuple[str, ...]:
        entities = entities_for_channel(topic)
        if entities is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"The topic information for org CORE/prod/{self.tenant_id} and topic {topic} "
                "not found. Ensure the topic name is correct and that the topic exists.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
            )
        return entities

    # -- unary RPCs ---------------------------------------------------------------------
    def GetTopic(self, request: pb2.TopicRequest, context: grpc.ServicerContext) -> pb2.TopicInfo:
        rpc_id = str(uuid.uuid4())
        self._check_call(context, rpc_id, "GetTopic")
        entities = self._entities(request.topic_name, context, rpc_id, "GetTopic")
        return pb2.TopicInfo(
            topic_name=request.topic_name,
            tenant_guid=self.tenant_id,
            can_publish=False,
            can_subscribe=True,
            # Multi-entity channels carry several schemas; report the first entity's.
            schema_id=self.schemas.schema_id(entities[0]),
            rpc_id=rpc_id,
        )

    def GetSchema(
        self, request: pb2.SchemaRequest, context: grpc.ServicerContext
    ) -> pb2.SchemaInfo:
        rpc_id = str(uuid.uuid4())
        self._check_call(context, rpc_id, "GetSchema")
        try:
            text = self.schemas.schema_json(request.schema_id)
        except UnknownSchemaError:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"The schema {request.schema_id!r} was not found.",
                rpc_id=rpc_id,
                rpc_type="GetSchema",
            )
        return pb2.SchemaInfo(schema_json=text, schema_id=request.schema_id, rpc_id=rpc_id)

    # -- Subscribe ----------------------------------------------------------------------
    def Subscribe(
        self, request_iterator: Iterator[pb2.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb2.FetchResponse]:
        rpc_id = str(uuid.uuid4())
        with self.faults._lock:
            self.faults.subscribe_calls += 1
        self._check_call(context, rpc_id, "Subscribe")
        first = next(request_iterator, None)
        if first is None:
            return
        topic = first.topic_name
        entities = self._entities(topic, context, rpc_id, "Subscribe")
        if first.num_requested <= 0:
            self._abort_requested(context, rpc_id, first.num_requested)
        cursor = self._start_cursor(first, context, rpc_id)
        flow = _FlowState(self.faults)
        flow.grant(first.num_requested)
        reader = threading.Thread(
            target=self._read_requests,
            args=(request_iterator, topic, flow),
            name=f"pubsub-requests-{rpc_id[:8]}",
            daemon=True,
        )
        reader.start()
        context.add_callback(flow.finish)
        yield from self._deliver(entities, cursor, flow, context, rpc_id)

    def _abort_requested(self, context: grpc.ServicerContext, rpc_id: str, value: int) -> NoReturn:
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"num_requested must be greater than 0 (got {value}); request between 1 and "
            f"{MAX_OUTSTANDING} events.",
            rpc_id=rpc_id,
            rpc_type="Subscribe",
            error_code=REQUESTED_EVENTS_INVALID,
        )

    def _start_cursor(
        self, first: pb2.FetchRequest, context: grpc.ServicerContext, rpc_id: str
    ) -> int | None:
        """Replay after which delivery starts (None: from the oldest retained event)."""
        if first.replay_preset == pb2.ReplayPreset.LATEST:
            return self.source.latest_replay()
        if first.replay_preset == pb2.ReplayPreset.EARLIEST:
            return None
        if first.replay_preset != pb2.ReplayPreset.CUSTOM:
            self._abort_replay(context, rpc_id, REPLAY_VALIDATION_FAILED)
        if not first.replay_id:
            self._abort_replay(context, rpc_id, REPLAY_VALIDATION_FAILED)
        if len(first.replay_id) != self.replay_id_bytes:  # not an id this bus issued
            self._abort_replay(context, rpc_id, REPLAY_CORRUPTED)
        replay = int.from_bytes(first.replay_id, "big")
        if not self._replay_retained(replay):
            self._abort_replay(context, rpc_id, REPLAY_CORRUPTED)
        return replay

    def _abort_replay(
        self, context: grpc.ServicerContext, rpc_id: str, error_code: str
    ) -> NoReturn:
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            REPLAY_INVALID_TEXT,
            rpc_id=rpc_id,
            rpc_type="Subscribe",
            error_code=error_code,
        )

    def _replay_retained(self, replay: int) -> bool:
        """A CUSTOM start point must exist on the bus and lie inside the retention window."""
        latest = self.source.latest_replay()
        if replay >= latest:
            return replay == latest  # at the tip is fine; beyond it was never issued
        now = _now_ms()
        earliest = self.source.earliest_retained_replay(now)
        if earliest is None or replay < earliest:
            return False
        at_or_after = self.source.read_changes(ALL_ENTITIES, replay - 1, 1)
        return not at_or_after or at_or_after[0].commit_timestamp >= now - self.retention_ms

    def _read_requests(
        self, request_iterator: Iterator[pb2.FetchRequest], topic: str, flow: _FlowState
    ) -> None:
        """Later FetchRequests only add capacity; their preset and replay id are ignored."""
        try:
            for request in request_iterator:
                if request.topic_name and request.topic_name != topic:
                    flow.fail(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"The topic {request.topic_name} does not match the subscribed topic "
                        f"{topic}.",
                        TOPIC_MISMATCH,
                    )
                    return
                if request.num_requested <= 0:
                    flow.fail(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"num_requested must be greater than 0 (got {request.num_requested}).",
                        REQUESTED_EVENTS_INVALID,
                    )
                    return
                flow.grant(request.num_requested)
        except grpc.RpcError:
            pass  # the client went away; the delivery loop sees context.is_active() == False

    def _deliver(
        self,
        entities: Sequence[str],
        cursor: int | None,
        flow: _FlowState,
        context: grpc.ServicerContext,
        rpc_id: str,
    ) -> Iterator[pb2.FetchResponse]:
        while context.is_active():
            with flow.cond:
                if flow.error is None and flow.pending == 0 and not flow.done:
                    flow.cond.wait(timeout=min(0.5, self.idle_timeout_s))
                if flow.error is not None:
                    code, message, error_code = flow.error
                    _abort(
                        context,
                        code,
                        message,
                        rpc_id=rpc_id,
                        rpc_type="Subscribe",
                        error_code=error_code,
                    )
                if flow.done:
                    return
                pending = flow.pending
                idle_for = time.monotonic() - flow.last_activity
            if self.faults.silent:
                time.sleep(0.05)
                continue
            if pending == 0:
                if idle_for >= self.idle_timeout_s:
                    return  # the real service closes a stream idle at pending=0 (~60 s)
                continue
            tip = self.source.latest_replay()
            batch = self.source.read_changes(entities, cursor, pending)
            changes = self._retained(batch)
            if batch and not changes:
                cursor = batch[-1].replay  # all past this server's retention: skip them
                continue
            if not changes:
                # Everything up to `tip` was scanned: other entities' events are skipped for good.
                cursor = tip if cursor is None else max(cursor, tip)
                # The first response of a stream is immediate, so a caught-up subscriber
                # learns the bus position at once; later keepalives follow the interval.
                quiet_for = (
                    None if flow.last_response is None else time.monotonic() - flow.last_response
                )
                if quiet_for is None or quiet_for >= self.keepalive_interval_s:
                    yield self._keepalive(flow, rpc_id, scanned=cursor)
                else:
                    wait = min(self.keepalive_interval_s - quiet_for, _POLL_S)
                    self.source.wait_for_changes(cursor, wait)
                continue
            allowed, action = self.faults.allow(len(changes))
            changes = changes[:allowed]
            if changes:
                cursor = changes[-1].replay
                yield self._events_response(changes, flow, rpc_id)
            if action == "reset":
                context.abort(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer (RST_STREAM)")
            if action == "close":
                return

    def _retained(self, changes: list[StoredChange]) -> list[StoredChange]:
        floor = _now_ms() - self.retention_ms
        return [c for c in changes if c.commit_timestamp >= floor]

    def _events_response(
        self, changes: list[StoredChange], flow: _FlowState, rpc_id: str
    ) -> pb2.FetchResponse:
        events = []
        for change in changes:
            schema_id, payload = encode_change(change, self.schemas)
            producer = pb2.ProducerEvent(
                id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(change.replay))),
                schema_id=schema_id,
                payload=payload,
            )
            events.append(
                pb2.ConsumerEvent(event=producer, replay_id=self._replay_id(change.replay))
            )
        with flow.cond:
            flow.pending -= len(changes)
            flow.last_activity = flow.last_response = time.monotonic()
            pending = flow.pending
        return pb2.FetchResponse(
            events=events,
            latest_replay_id=self._replay_id(changes[-1].replay),
            rpc_id=rpc_id,
            pending_num_requested=pending,
        )

    def _replay_id(self, replay: int) -> bytes:
        return replay_id_from_int(replay, self.replay_id_bytes)

    def _keepalive(self, flow: _FlowState, rpc_id: str, *, scanned: int) -> pb2.FetchResponse:
        """Empty response carrying the position up to which this topic has been scanned.

        Not the live tip: an event appended after the scan may still be owed to this stream,
        and a client resuming after a later id would lose it. On an empty bus there is no
        position to give (and 0 would not be a valid CUSTOM start once events exist).
        """
        with flow.cond:
            flow.last_activity = flow.last_response = time.monotonic()
            pending = flow.pending
        return pb2.FetchResponse(
            latest_replay_id=self._replay_id(scanned) if scanned else b"",
            rpc_id=rpc_id,
            pending_num_requested=pending,
        )


@dataclass
class RunningPubSubServer:
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

    def __enter__(self) -> RunningPubSubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
