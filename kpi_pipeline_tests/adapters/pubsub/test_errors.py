"""error_from_rpc on statuses the loopback server cannot produce (a real RST_STREAM).

The other mappings are exercised end to end in test_pubsub_protocol.py; here a minimal
``grpc.RpcError`` carrying a status, as grpc raises it for a reset HTTP/2 stream.
"""

from __future__ import annotations

import grpc
import pytest

from kpi_pipeline.adapters.pubsub.errors import error_from_rpc
from kpi_pipeline.core.errors import PubSubError, ServiceUnavailableError, TopicNotFoundError


class StatusError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers=()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailers


def test_rst_stream_internal_without_trailer_is_transient() -> None:
    error = error_from_rpc(
        StatusError(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
    )
    assert isinstance(error, ServiceUnavailableError) and error.transient


def test_other_internal_errors_are_not_retried_blindly() -> None:
    error = error_from_rpc(StatusError(grpc.StatusCode.INTERNAL, "boom", (("rpc-id", "r1"),)))
    assert type(error) is PubSubError and not error.transient and error.rpc_id == "r1"


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED])
def test_missing_or_forbidden_topic(code: grpc.StatusCode) -> None:
    error = error_from_rpc(StatusError(code, "topic /data/X not found"))
    assert isinstance(error, TopicNotFoundError) and "grpc " + code.name in str(error)
