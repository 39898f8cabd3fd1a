"""What every Pub/Sub RPC shares: the servicer's configuration, the checks each call gets
(the three metadata keys, the session, the tenant, injected ``service.unavailable``, the
topic), and failing a call with the real status, message suffix and trailers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NoReturn

import grpc

from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.core.checks import positive
from kpi_pipeline.core.errors import AUTH_ERROR, SERVICE_UNAVAILABLE
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.sandbox.changelog import ChangeLogSource, entities_for_channel
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.pubsub_server.faults import Faults

RETENTION_MS = 72 * 3600 * 1000
# A real org sends a keepalive on a quiet stream within 270 s; the sandbox does the same by
# default (``keepalive_interval_s``; tests of the protocol use shorter ones).
KEEPALIVE_INTERVAL_S = 270.0


REQUIRED_METADATA = ("accesstoken", "instanceurl", "tenantid")


def now_ms() -> int:
    return int(time.time() * 1000)


def abort(
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


class PubSubServicerBase(pb2_grpc.PubSubServicer):
    """The servicer's configuration and the checks every RPC makes."""

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
        self.replay_id_bytes = replay_id_bytes
        self.source = source
        self.token_validator = token_validator
        self.tenant_id = tenant_id
        self.keepalive_interval_s = positive("keepalive_interval_s", keepalive_interval_s)
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
            abort(
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
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "The session is invalid or expired, or the tenant id does not match the org. "
                "Get a new access token and retry.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
                error_code=AUTH_ERROR,
            )
        if self.faults.take_unavailable():
            abort(
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
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"The topic information for org CORE/prod/{self.tenant_id} and topic {topic} "
                "not found. Ensure the topic name is correct and that the topic exists.",
                rpc_id=rpc_id,
                rpc_type=rpc_type,
            )
        return entities

    def _replay_id(self, replay: int) -> bytes:
        return replay_id_from_int(replay, self.replay_id_bytes)
