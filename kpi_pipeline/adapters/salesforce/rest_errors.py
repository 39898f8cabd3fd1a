"""How the REST adapter reads Salesforce's failures (an adapter helper): a SaveResult's
errors become a ``SaveError`` (retryable or not), and an exception of simple-salesforce or
requests becomes the typed ``SalesforceError`` that says whether a retry may help and what
the operator can do."""

from __future__ import annotations

from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError as SimpleSalesforceError,
)
from simple_salesforce.exceptions import (
    SalesforceGeneralError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from kpi_pipeline.core.salesforce_rest import (
    RequestLimitError,
    SalesforceError,
    SalesforceRequestError,
    SalesforceUnavailableError,
    SaveError,
)

RETRYABLE_RECORD_ERRORS = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",  # another transaction holds the row; Salesforce waits 10 s at most
        "UNKNOWN_EXCEPTION",  # transient server-side failure of one record
    }
)


def save_error(errors: list[dict[str, Any]]) -> SaveError:
    first = errors[0] if errors else {}
    code = str(first.get("statusCode") or "UNKNOWN_EXCEPTION")
    return SaveError(
        code,
        str(first.get("message") or "no error detail in the SaveResult"),
        tuple(first.get("fields") or ()),
        retryable=code in RETRYABLE_RECORD_ERRORS,
    )


def _error_body(exc: SimpleSalesforceError) -> tuple[str | None, str]:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode"), str(content[0].get("message", ""))
    return None, str(content)[:300]


def classify(exc: Exception, path: str) -> SalesforceError:
    if isinstance(exc, requests.RequestException):
        return SalesforceUnavailableError(
            f"Salesforce REST {path} unreachable ({type(exc).__name__}); the org may be down or the "
            "instance URL wrong; unconfirmed updates stay in the outbox",
        )
    assert isinstance(exc, SimpleSalesforceError)
    code, message = _error_body(exc)
    if isinstance(exc, SalesforceRefusedRequest) and code == "REQUEST_LIMIT_EXCEEDED":
        if "TotalRequests" in message:
            return RequestLimitError(
                f"Salesforce's daily API request allocation is used up ({message}); updates stay "
                "queued: wait for the rolling 24 h window or raise the org's allocation",
                daily=True,
                error_code=code,
                status=403,
            )
        return RequestLimitError(
            f"Salesforce API limit reached ({message}); too many concurrent long requests: retried "
            "with backoff",
            daily=False,
            error_code=code,
            status=403,
        )
    if isinstance(exc, SalesforceGeneralError) and exc.status >= 500:
        return SalesforceUnavailableError(
            f"Salesforce REST {path} failed with HTTP {exc.status} ({code}: {message}); retried with backoff",
            error_code=code,
            status=exc.status,
        )
    hint = (
        " (the record or resource does not exist)"
        if isinstance(exc, SalesforceResourceNotFound)
        else ""
    )
    return SalesforceRequestError(
        f"Salesforce refused {path}: HTTP {exc.status} {code}: {message}{hint}",
        error_code=code,
        status=exc.status,
    )


def is_daily_limit(error: SalesforceError) -> bool:
    # The rolling 24 h allocation won't free up within a backoff; stop and let the outbox wait.
    return isinstance(error, RequestLimitError) and error.daily
