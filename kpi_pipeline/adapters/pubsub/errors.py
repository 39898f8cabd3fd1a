"""The gRPC side of Pub/Sub API errors: a failed call's status and trailers as a typed error.

Salesforce ends a stream with a gRPC status plus the trailers ``error-code`` and ``rpc-id``
(the Pub/Sub API's documented error handling). ``error_from_rpc`` turns that into one of the
classes of ``kpi_pipeline.core.errors``, so callers branch on types instead of parsing strings.
"""

from __future__ import annotations

import grpc

from kpi_pipeline.core.errors import (
    AUTH_ERROR,
    REPLAY_CORRUPTED,
    REPLAY_VALIDATION_FAILED,
    SERVICE_UNAVAILABLE,
    PubSubAuthError,
    PubSubError,
    PubSubTlsError,
    ReplayIdInvalidError,
    ServiceUnavailableError,
    TopicNotFoundError,
)

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
