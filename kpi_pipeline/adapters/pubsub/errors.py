"""Typed errors of the Pub/Sub API client, mapped from the real gRPC status and trailers.

Salesforce ends a stream with a gRPC status plus the trailers ``error-code`` and
``rpc-id`` (reference §3 "Errors"). ``error_from_rpc`` turns that into one of the classes
below, so callers branch on types instead of parsing strings.
"""

from __future__ import annotations

import grpc

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
        grpc_code: grpc.StatusCode | None = None,
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


# Markers of a failed TLS handshake in gRPC's UNAVAILABLE details (BoringSSL / grpc-core).
_TLS_FAILURE_MARKERS = ("Tls handshake failed", "CERTIFICATE_VERIFY_FAILED", "SSL_ERROR_SSL")


def tls_failure(error: PubSubError, *, target: str, ca_file: str | None) -> PubSubError:
    """``error`` as a ``PubSubTlsError`` naming the trust setting to fix, when it is a failed
    TLS handshake; otherwise ``error`` itself."""
    if error.grpc_code != grpc.StatusCode.UNAVAILABLE or not any(
        marker in error.message for marker in _TLS_FAILURE_MARKERS
    ):
        return error
    trusted = (
        f"the CA file {ca_file} (KPI_PUBSUB_CA_FILE)"
        if ca_file
        else "the system's CA certificates (KPI_PUBSUB_CA_FILE is not set)"
    )
    return PubSubTlsError(
        f"TLS handshake with the Pub/Sub API at {target} failed: its certificate is not "
        f"signed by {trusted}. Fix: point KPI_PUBSUB_CA_FILE at the PEM CA that signed the "
        "server's certificate (for the sandbox org: DATA_DIR/sandbox_ca.pem), and check the "
        f"endpoint speaks TLS. gRPC said: {error.message}",
        grpc_code=error.grpc_code,
        error_code=error.error_code,
        rpc_id=error.rpc_id,
    )


def _trailer(exc: grpc.RpcError, key: str) -> str:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for item_key, value in trailers or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def error_from_rpc(exc: grpc.RpcError) -> PubSubError:
    """Map a failed gRPC call to the matching typed error (status + ``error-code`` trailer)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    error_code = _trailer(exc, "error-code")
    rpc_id = _trailer(exc, "rpc-id")
    kwargs = {"grpc_code": code, "error_code": error_code, "rpc_id": rpc_id}
    if error_code in (REPLAY_CORRUPTED, REPLAY_VALIDATION_FAILED):
        return ReplayIdInvalidError(details, **kwargs)
    if code == grpc.StatusCode.UNAUTHENTICATED or error_code == AUTH_ERROR:
        return PubSubAuthError(details, **kwargs)
    if error_code == SERVICE_UNAVAILABLE or code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailableError(details, **kwargs)
    if code == grpc.StatusCode.INTERNAL and not error_code and "RST_STREAM" in details:
        return ServiceUnavailableError(details, **kwargs)  # network reset, no trailer
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
        return TopicNotFoundError(details, **kwargs)
    return PubSubError(details, **kwargs)
