"""Delivering a Subscribe stream: flow control, events, keepalives, idle close.

The client's later FetchRequests only add capacity (summed and capped at
``MAX_OUTSTANDING``); the delivery loop sends what the change log holds for the topic's
entities, an empty keepalive carrying the scanned position when nothing is owed, closes a
stream idle at zero outstanding, and applies the injected resets and closes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import grpc

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.core.errors import REQUESTED_EVENTS_INVALID, TOPIC_MISMATCH
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import encode_change
from kpi_pipeline.sandbox.pubsub_server.faults import Faults
from kpi_pipeline.sandbox.pubsub_server.servicer_base import PubSubServicerBase, abort, now_ms

MAX_OUTSTANDING = 100


# Longest a delivery thread waits before re-checking that its stream is still open, so a
# stream the client closed frees its worker thread soon, whatever the keepalive interval.
_POLL_S = 0.5


class FlowState:
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


class StreamDelivery(PubSubServicerBase):
    """The delivery side of Subscribe (see the module docstring)."""

    def _read_requests(
        self, request_iterator: Iterator[pb2.FetchRequest], topic: str, flow: FlowState
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
        flow: FlowState,
        context: grpc.ServicerContext,
        rpc_id: str,
    ) -> Iterator[pb2.FetchResponse]:
        while context.is_active():
            with flow.cond:
                if flow.error is None and flow.pending == 0 and not flow.done:
                    flow.cond.wait(timeout=min(0.5, self.idle_timeout_s))
                if flow.error is not None:
                    code, message, error_code = flow.error
                    abort(
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
        floor = now_ms() - self.retention_ms
        return [c for c in changes if c.commit_timestamp >= floor]

    def _events_response(
        self, changes: list[StoredChange], flow: FlowState, rpc_id: str
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

    def _keepalive(self, flow: FlowState, rpc_id: str, *, scanned: int) -> pb2.FetchResponse:
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
