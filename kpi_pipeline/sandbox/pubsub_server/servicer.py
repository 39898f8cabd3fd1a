"""``PubSubServicer``: ``eventbus.v1.PubSub``'s RPCs (GetTopic, GetSchema, Subscribe).

Subscribe reads the preset and replay id from the first FetchRequest only; a CUSTOM replay
id must be one this bus issued and still retains (REPLAY_CORRUPTED otherwise)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import NoReturn

import grpc

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.core.errors import (
    REPLAY_CORRUPTED,
    REPLAY_VALIDATION_FAILED,
    REQUESTED_EVENTS_INVALID,
    UnknownSchemaError,
)
from kpi_pipeline.sandbox.changelog import ALL_ENTITIES
from kpi_pipeline.sandbox.pubsub_server.delivery import MAX_OUTSTANDING, FlowState, StreamDelivery
from kpi_pipeline.sandbox.pubsub_server.servicer_base import abort, now_ms

REPLAY_INVALID_TEXT = (
    "The Replay ID validation failed. Ensure that the replay_id is valid and refers to an "
    "event that is within the retention window."
)


class PubSubServicer(StreamDelivery):
    """``eventbus.v1.PubSub`` over a change log (Subscribe, GetSchema, GetTopic)."""

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
            abort(
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
        flow = FlowState(self.faults)
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
        abort(
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
        abort(
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
        now = now_ms()
        earliest = self.source.earliest_retained_replay(now)
        if earliest is None or replay < earliest:
            return False
        at_or_after = self.source.read_changes(ALL_ENTITIES, replay - 1, 1)
        return not at_or_after or at_or_after[0].commit_timestamp >= now - self.retention_ms
