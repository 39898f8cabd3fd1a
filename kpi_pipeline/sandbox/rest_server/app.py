"""``RestApp``: the REST server's routes over its endpoints, independent of the HTTP plumbing.

Every data request is recorded (before the auth check, so tests see refused ones too),
needs a valid session, may meet an injected fault, and gets ``Sforce-Limit-Info``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from kpi_pipeline.sandbox.rest_server.describe import describe_sobject
from kpi_pipeline.sandbox.rest_server.oauth import OAuthEndpoint
from kpi_pipeline.sandbox.rest_server.query import QueryEndpoints
from kpi_pipeline.sandbox.rest_server.responses import (
    UNPARSEABLE,
    ApiError,
    Response,
    allow_methods,
    call_options_client,
    json_body,
    save_error,
)
from kpi_pipeline.sandbox.rest_server.sobjects import SObjectEndpoints

_DATA_PATH = re.compile(r"^/services/data/v(?P<version>\d+\.\d)/(?P<rest>.*)$")


class RestApp(OAuthEndpoint, SObjectEndpoints, QueryEndpoints):
    """Routes and handlers, independent of the HTTP plumbing."""

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        path = unquote(url.path)
        failure = self.faults.take_request_failure()
        if failure == "drop":
            return Response(0, drop=True)
        if failure == "500":
            return ApiError(
                500, "UNKNOWN_EXCEPTION", "An unexpected error occurred (injected fault)."
            ).response()
        try:
            if path == "/services/oauth2/token":
                self._record(method, path, None, None)  # the assertion is a secret: not logged
                if method != "POST":
                    raise ApiError(
                        405,
                        "METHOD_NOT_ALLOWED",
                        f"HTTP Method '{method}' not allowed. Allowed are POST",
                    )
                return self.token(body)
            data = _DATA_PATH.match(path)
            if not data:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            return self._data_request(
                method, data["version"], data["rest"], url.query, headers, body
            )
        except ApiError as exc:
            return exc.response()

    def _data_request(
        self,
        method: str,
        version: str,
        rest: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        client = call_options_client(headers.get("Sforce-Call-Options", ""))
        payload = json_body(body) if body else None
        self._record(  # before the auth check, so tests see refused requests too
            method,
            f"/services/data/v{version}/{rest}",
            None if payload is UNPARSEABLE else payload,
            client,
            headers.get("Sforce-Auto-Assign"),
        )
        token = self._bearer_token(headers)
        if not self.registry.is_valid(token):
            raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if limit_message := self.faults.take_limit():
            raise ApiError(403, "REQUEST_LIMIT_EXCEEDED", limit_message)
        if payload is UNPARSEABLE:
            raise ApiError(400, "JSON_PARSER_ERROR", "the request body is not valid JSON")
        response = self._route(method, version, rest.rstrip("/"), query, payload, client, token)
        response.headers["Sforce-Limit-Info"] = (
            f"api-usage={self._count_call()}/{self.api_daily_limit}"
        )
        return response

    def _route(
        self,
        method: str,
        version: str,
        rest: str,
        query: str,
        payload: Any,
        client: str | None,
        token: str,
    ) -> Response:
        parts = rest.split("/")
        if parts[0] == "sobjects" and len(parts) == 3 and parts[2] == "describe":
            allow_methods(method, ("GET",))
            return Response(200, describe_sobject(parts[1], self._schemas))
        if parts[0] == "sobjects" and len(parts) == 2:
            allow_methods(method, ("POST",))
            return self.create_record(parts[1], payload, self._origin(version, client), token)
        if parts[0] == "sobjects" and len(parts) == 3:
            allow_methods(method, ("GET", "PATCH", "DELETE"))
            if method == "GET":
                return self.get_record(version, parts[1], parts[2], query)
            if method == "DELETE":
                return self.delete_record(parts[1], parts[2], self._origin(version, client), token)
            return self.update_record(
                parts[1], parts[2], payload, self._origin(version, client), token
            )
        if rest == "composite/sobjects":
            allow_methods(method, ("PATCH",))
            return self.update_collection(payload, self._origin(version, client), token)
        if rest == "query":
            allow_methods(method, ("GET",))
            return self.query(version, parse_qs(query).get("q", [""])[0])
        if parts[0] == "query" and len(parts) == 2:
            allow_methods(method, ("GET",))
            return self.query_more(version, parts[1])
        if rest == "actions/standard/emailSimple":
            allow_methods(method, ("POST",))
            return self.email_simple(payload)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    @staticmethod
    def _bearer_token(headers: Mapping[str, str]) -> str:
        value = headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme in ("Bearer", "OAuth") else ""

    def _origin(self, version: str, client: str | None) -> str:
        origin = f"com/salesforce/api/rest/{version}"
        return f"{origin};client={client}" if client else origin

    def email_simple(self, payload: Any) -> Response:
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "JSON_PARSER_ERROR", 'the body must be {"inputs": [{...}]}')
        results = []
        for item in inputs:
            missing = [
                name
                for name, present in (
                    (
                        "emailAddresses",
                        bool(item.get("emailAddresses") or item.get("emailAddressesArray")),
                    ),
                    ("emailSubject", bool(item.get("emailSubject"))),
                    ("emailBody", bool(item.get("emailBody"))),
                )
                if not present
            ]
            errors = [
                save_error("REQUIRED_FIELD_MISSING", f"Missing required input parameter: {m}")
                for m in missing
            ]
            if not errors:
                with self._lock:
                    self.sent_emails.append(dict(item))
            results.append(
                {
                    "actionName": "emailSimple",
                    "errors": errors or None,
                    "isSuccess": not errors,
                    "outputValues": None,
                }
            )
        return Response(200, results)
