"""What the Salesforce REST API answers, as types (pure): the errors a request ends with, and the
result of a write through sObject Collections. The REST adapter raises and returns them; use
cases branch on them without importing the adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SalesforceError(RuntimeError):
    """A REST request failed for good. The message names the Salesforce error and the fix."""

    retryable = False

    def __init__(self, message: str, *, error_code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class SessionInvalidError(SalesforceError):
    """401 INVALID_SESSION_ID even after re-authenticating once."""

    retryable = True  # a later drain (new token, fixed config) may succeed


class RequestLimitError(SalesforceError):
    """403 REQUEST_LIMIT_EXCEEDED after the bounded backoff, or the daily total at once."""

    retryable = True

    def __init__(self, message: str, *, daily: bool, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.daily = daily  # the org's rolling 24 h total, not the concurrency limit


class HistoryUnavailableError(SalesforceError):
    """The org has no history object for the sObject (field history tracking was never
    turned on for it, or the API user cannot read it): INVALID_TYPE."""


class SalesforceUnavailableError(SalesforceError):
    """5xx responses or broken connections after the bounded backoff."""

    retryable = True


class SalesforceRequestError(SalesforceError):
    """The request itself was refused (400, 403 other than limits, 404): retrying won't help."""


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    record_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SaveError:
    """One record's failure, from a SaveResult (or its request's error)."""

    status_code: str
    message: str
    fields: tuple[str, ...] = ()
    retryable: bool = False

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


@dataclass
class UpdateReport:
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, SaveError] = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)
    attempts: int = 0  # collection requests sent, retries included
    error: SalesforceError | None = None  # why records ended unconfirmed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unconfirmed
