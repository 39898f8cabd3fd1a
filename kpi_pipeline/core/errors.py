"""Typed errors of the Pub/Sub API, and the ``error-code`` trailer values Salesforce sends.

Pure: the gRPC adapter (``kpi_pipeline.adapters.pubsub.errors.error_from_rpc``) maps a failed
call's status and trailers to these classes, so use cases branch on types without importing
gRPC.
"""

from __future__ import annotations

from typing import Any

from kpi_pipeline.core.events import replay_id_hex

CODE_PREFIX = "sfdc.platform.eventbus.grpc."
REPLAY_CORRUPTED = CODE_PREFIX + "subscription.fetch.replayid.corrupted"
REPLAY_VALIDATION_FAILED = CODE_PREFIX + "subscription.fetch.replayid.validation.failed"
AUTH_ERROR = CODE_PREFIX + "service.auth.error"
SERVICE_UNAVAILABLE = CODE_PREFIX + "service.unavailable"
REQUESTED_EVENTS_INVALID = CODE_PREFIX + "subscription.fetch.requested.events.invalid"
TOPIC_MISMATCH = CODE_PREFIX + "subscription.fetch.topic.mismatch"


class PubSubError(Exception):
    """A failed Pub/Sub API call: gRPC status code, ``error-code`` trailer, ``rpc-id`` trailer."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        grpc_code: Any = None,  # a grpc.StatusCode, set by the adapter
        error_code: str = "",
        rpc_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code
        self.error_code = error_code
        self.rpc_id = rpc_id
        self.channel: str | None = None  # set by the stream subscriber: whose stream failed

    def __str__(self) -> str:
        parts = [self.message]
        if self.grpc_code is not None:
            parts.append(f"[grpc {self.grpc_code.name}")
            parts[-1] += f", error-code {self.error_code}]" if self.error_code else "]"
        return " ".join(parts)


class ReplayIdInvalidError(PubSubError):
    """The replay id is corrupted, outside the 72 h retention, or missing for CUSTOM.

    Fix: restart from EARLIEST (or LATEST, accepting a gap) and re-sync the gap over REST.
    """


class PubSubAuthError(PubSubError):
    """The access token, instance URL or tenant id was rejected (or a header was missing)."""


class ServiceUnavailableError(PubSubError):
    """The service or the network failed; retry with backoff from the last received replay id."""

    transient = True


class TopicNotFoundError(PubSubError):
    """The channel does not exist, is not enabled for CDC, or the user cannot subscribe."""


class PubSubTlsError(PubSubError):
    """The TLS handshake failed: the server's certificate does not chain to the trusted CA
    (or the server does not speak TLS). Retrying cannot help; the trust setting must change."""


class StreamStalledError(PubSubError):
    """No response (not even a keepalive) arrived within the stall timeout."""

    transient = True


class UnknownSchemaError(PubSubError):
    """An event names a schema id the server does not know."""


class PayloadDecodeError(PubSubError):
    """An event's Avro payload does not decode with its writer schema."""

    def __init__(self, *, channel: str, replay_id: bytes, schema_id: str, cause: str) -> None:
        super().__init__(
            f"cannot decode the Avro payload of the event on {channel} at replay id "
            f"{replay_id_hex(replay_id)} with schema {schema_id}: {cause}. Fix: check that the "
            "payload is schemaless Avro written with that schema id (re-fetch the schema with "
            "GetSchema, never reuse a schema cached per topic); if the event is corrupt, re-sync "
            "the record over REST and resume after this replay id."
        )
        self.channel = channel
        self.replay_id = replay_id
        self.schema_id = schema_id
