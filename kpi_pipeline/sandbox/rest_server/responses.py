"""The REST server's answers and errors in Salesforce's shapes, and request-level helpers.

``ApiError`` is the error list ``[{"message", "errorCode", "fields"}]`` every handler raises;
``save_error`` the per-record error of sObject Collections; ``oauth_error`` the token
endpoint's. The helpers read what a request carries (JSON body, ``Sforce-Call-Options``) and
refuse methods a resource does not allow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class ApiError(Exception):
    """A REST error in Salesforce's list shape: [{"message", "errorCode"}], plus ``fields``
    for errors about a record's values (Salesforce sends it for DML errors, not for
    request-level ones such as INVALID_SESSION_ID)."""

    def __init__(self, status: int, code: str, message: str, fields: Sequence[str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = None if fields is None else list(fields)

    def response(self) -> Response:
        error: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            error["fields"] = self.fields
        return Response(self.status, [error])


def oauth_error(error: str, description: str) -> Response:
    return Response(400, {"error": error, "error_description": description})


def save_error(code: str, message: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": list(fields)}


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received (secrets left out), for tests to assert on."""

    method: str
    path: str
    body: Any
    client: str | None
    auto_assign: str | None = None  # the Sforce-Auto-Assign header as sent


def allow_methods(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ApiError(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}",
        )


UNPARSEABLE = object()  # a body that is not JSON: refused after the auth check, like Salesforce


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return UNPARSEABLE


def call_options_client(value: str) -> str | None:
    """``client`` from ``Sforce-Call-Options: client=<id>[, defaultNamespace=...]``."""
    for part in value.split(","):
        name, _, client = part.strip().partition("=")
        if name.strip() == "client" and client.strip():
            return client.strip()
    return None
