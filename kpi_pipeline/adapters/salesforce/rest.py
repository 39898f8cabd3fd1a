"""Salesforce REST adapter: write-back through sObject Collections, and the reads re-sync needs.

HTTP goes through simple-salesforce in direct mode (``instance_url`` + ``session_id``, API
version set explicitly); the token comes from a ``TokenProvider`` (JWT flow or static). Every
request carries ``Sforce-Call-Options: client=<client_id>``, so the CDC events our writes
cause say ``changeOrigin ...;client=<client_id>`` and the pipeline can skip its own echoes.

Failure handling:

* per-record errors in SaveResults are checked one by one; retryable ones
  (``UNABLE_TO_LOCK_ROW``) are retried for the failed records only, with exponential backoff
  and jitter; the others are reported and not retried;
* HTTP 401 ``INVALID_SESSION_ID``: invalidate the token, re-authenticate and retry once; a
  second 401 stops;
* HTTP 403 ``REQUEST_LIMIT_EXCEEDED``: back off and retry, bounded; the org's daily total
  ("TotalRequests") is not worth retrying within minutes and stops at once;
* HTTP 5xx and dropped connections: back off and retry, bounded (updates re-apply the same
  values, so re-sending is safe);
* HTTP 400 on a collection (malformed request, unknown field) fails its records, not retried.

Requests also carry ``Sforce-Auto-Assign: FALSE`` (``auto_assign=False``): without it the REST
API applies the org's active assignment rules to every Lead update (the documented default is
TRUE), which would undo the owner our routing policy chose.

``update_records`` never loses track of a record: each one ends up ``succeeded``, ``failed``
(with its error and whether a later retry may help) or ``unconfirmed`` (the request carrying
it failed, so Salesforce may or may not have applied it), and ``error`` says why it stopped.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError as SimpleSalesforceError,
)
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from kpi_pipeline.adapters.auth.tokens import AuthError, TokenProvider
from kpi_pipeline.core.salesforce_rest import (
    HistoryUnavailableError,
    RecordUpdate,
    RequestLimitError,
    SalesforceError,
    SalesforceRequestError,
    SalesforceUnavailableError,
    SaveError,
    SessionInvalidError,
    UpdateReport,
)
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

MAX_COLLECTION_RECORDS = 200
RETRYABLE_RECORD_ERRORS = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",  # another transaction holds the row; Salesforce waits 10 s at most
        "UNKNOWN_EXCEPTION",  # transient server-side failure of one record
    }
)
_API_VERSION = re.compile(r"^\d{2,3}\.\d$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
T = TypeVar("T")


# --- errors ------------------------------------------------------------------------------


# --- results -----------------------------------------------------------------------------


# --- the adapter ---------------------------------------------------------------------------


class SalesforceRest:
    """REST calls against the org the token provider points at. Safe to share between threads."""

    def __init__(
        self,
        token_provider: TokenProvider,
        *,
        api_version: str = "64.0",
        client_id: str = "kpi_pipeline",
        auto_assign: bool = False,
        session: requests.Session | None = None,
        max_attempts: int = 5,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if not _API_VERSION.match(api_version):
            raise ValueError(
                f"api_version {api_version!r} must look like '64.0' (KPI_SALESFORCE_API_VERSION)"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not client_id or any(c in client_id for c in ",;= "):
            raise ValueError(
                f"client_id {client_id!r} must be a non-empty name without , ; = or spaces"
            )
        self.tokens = token_provider
        self.api_version = api_version
        self.client_id = client_id
        self.auto_assign = auto_assign
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._client: Salesforce | None = None
        self._client_token: str | None = None

    def __repr__(self) -> str:
        return f"SalesforceRest(api_version={self.api_version!r}, client_id={self.client_id!r})"

    # --- write-back ------------------------------------------------------------------------

    def update_records(self, sobject: str, updates: Sequence[RecordUpdate]) -> UpdateReport:
        """Update records with sObject Collections (allOrNone false, <= 200 per request).

        Updates of the same record are merged first (later fields win).
        """
        _check_name(sobject, "sObject type")
        merged = merge_updates(updates)
        report = UpdateReport()
        chunks = [
            merged[i : i + MAX_COLLECTION_RECORDS]
            for i in range(0, len(merged), MAX_COLLECTION_RECORDS)
        ]
        for index, chunk in enumerate(chunks):
            self._update_chunk(sobject, chunk, report)
            if report.error is not None:
                # The org is unreachable or refusing us: leave the rest unconfirmed, untouched.
                report.unconfirmed.extend(u.record_id for rest in chunks[index + 1 :] for u in rest)
                break
        return report

    def _update_chunk(self, sobject: str, chunk: list[RecordUpdate], report: UpdateReport) -> None:
        pending = chunk
        for attempt in range(1, self.max_attempts + 1):
            body = {
                "allOrNone": False,
                "records": [_collection_record(sobject, u) for u in pending],
            }
            try:
                results = self._call("PATCH", "composite/sobjects", json=body, counter=report)
                retry = self._sort_results(pending, results, report)
            except SalesforceRequestError as exc:
                # Malformed for good (e.g. unknown field): these records fail, retrying won't help.
                error = SaveError(exc.error_code or "REQUEST_REFUSED", str(exc))
                report.failed.update({u.record_id: error for u in pending})
                return
            except SalesforceError as exc:
                report.error = exc
                report.unconfirmed.extend(u.record_id for u in pending)
                return
            if not retry:
                return
            if attempt < self.max_attempts:
                log.info(
                    "retrying %d of %d %s records after record-level errors",
                    len(retry),
                    len(pending),
                    sobject,
                )
                self._backoff(attempt)
            pending = [u for u, _ in retry]
        report.failed.update({u.record_id: err for u, err in retry})

    def _sort_results(
        self, pending: list[RecordUpdate], results: Any, report: UpdateReport
    ) -> list[tuple[RecordUpdate, SaveError]]:
        """Files each SaveResult; returns the records to retry with their last error."""
        well_formed = isinstance(results, list) and all(isinstance(r, dict) for r in results)
        if not well_formed or len(results) != len(pending):
            # Nothing is filed: which records were applied is unknown, so all stay unconfirmed.
            raise SalesforceUnavailableError(
                f"sObject Collections answered {str(results)[:200]!r} for {len(pending)} records; "
                "expected one SaveResult per record"
            )
        retry: list[tuple[RecordUpdate, SaveError]] = []
        # SaveResults come in request order; failed entries carry no id, so match by position.
        for update, result in zip(pending, results, strict=True):
            if result.get("success"):
                report.succeeded.append(update.record_id)
                continue
            error = _save_error(result.get("errors") or [])
            if error.retryable:
                retry.append((update, error))
            else:
                report.failed[update.record_id] = error
        return retry

    # --- reads ------------------------------------------------------------------------------

    def get_record(
        self, sobject: str, record_id: str, fields: Sequence[str]
    ) -> dict[str, Any] | None:
        """One record's fields, or None when it does not exist (404)."""
        _check_name(sobject, "sObject type")
        _check_record_id(record_id)
        for name in fields:
            _check_name(name, "field name")
        params = {"fields": ",".join(fields)} if fields else None
        try:
            record = self._call("GET", f"sobjects/{sobject}/{record_id}", params=params)
        except SalesforceRequestError as exc:
            if exc.status == 404:
                return None
            raise
        return _strip_attributes(record or {})

    def describe(self, sobject: str) -> dict[str, Any]:
        """``sobjects/<Type>/describe``: the sObject's fields (name, type, compoundFieldName)."""
        _check_name(sobject, "sObject type")
        return self._call("GET", f"sobjects/{sobject}/describe")

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every row of a SOQL query (``nextRecordsUrl`` followed), without ``attributes``."""
        page = self._call("GET", "query/", params={"q": soql})
        rows = [_strip_attributes(r) for r in page.get("records", [])]
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = self._call("GET", self._relative(page["nextRecordsUrl"]))
            rows.extend(_strip_attributes(r) for r in page.get("records", []))
        return rows

    def query_modified_since(
        self, sobject: str, fields: Sequence[str], since: datetime, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Records with ``since <= LastModifiedDate [< until]``, oldest first (re-sync windows)."""
        _check_name(sobject, "sObject type")
        select = _select_list(fields, ("Id", "LastModifiedDate"))
        where = f"LastModifiedDate >= {soql_datetime(since)}"
        if until is not None:
            where += f" AND LastModifiedDate < {soql_datetime(until)}"
        return self.query(f"SELECT {select} FROM {sobject} WHERE {where} ORDER BY LastModifiedDate")

    def query_by_ids(
        self, sobject: str, fields: Sequence[str], ids: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Records by id (gap events name their records), 200 ids per query."""
        _check_name(sobject, "sObject type")
        select = _select_list(fields, ("Id",))
        unique = list(dict.fromkeys(ids))
        for record_id in unique:
            _check_record_id(record_id)
        rows: list[dict[str, Any]] = []
        for i in range(0, len(unique), MAX_COLLECTION_RECORDS):
            quoted = ",".join(f"'{rid}'" for rid in unique[i : i + MAX_COLLECTION_RECORDS])
            rows.extend(self.query(f"SELECT {select} FROM {sobject} WHERE Id IN ({quoted})"))
        return rows

    def field_history(self, sobject: str, field: str, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The history rows of one tracked field of those records, oldest first, 200 ids
        per query: ``Id``, the parent id (``LeadId`` for LeadHistory, ``ParentId`` for a
        custom object's ``Foo__History``), ``Field``, ``OldValue``, ``NewValue``,
        ``CreatedDate``, ``CreatedById``. Lead owner changes are ``Field = 'Owner'``.

        Raises ``HistoryUnavailableError`` when the org answers INVALID_TYPE."""
        _check_name(sobject, "sObject type")
        _check_name(field, "history field name")
        history, parent = history_object(sobject)
        unique = list(dict.fromkeys(ids))
        for record_id in unique:
            _check_record_id(record_id)
        select = f"{parent}, Field, OldValue, NewValue, CreatedDate, CreatedById"
        rows: list[dict[str, Any]] = []
        for i in range(0, len(unique), MAX_COLLECTION_RECORDS):
            quoted = ",".join(f"'{rid}'" for rid in unique[i : i + MAX_COLLECTION_RECORDS])
            soql = (
                f"SELECT {select} FROM {history} WHERE Field = '{field}' "
                f"AND {parent} IN ({quoted}) ORDER BY CreatedDate"
            )
            try:
                rows.extend(self.query(soql))
            except SalesforceRequestError as exc:
                if exc.error_code != "INVALID_TYPE":
                    raise
                raise HistoryUnavailableError(
                    f"the org has no {history} ({exc}); turn on field history tracking for "
                    f"{sobject} {field} (Setup > Object Manager > {sobject} > Fields & "
                    f"Relationships > Set History Tracking) and give the integration user read "
                    f"access to {history}",
                    error_code=exc.error_code,
                    status=exc.status,
                ) from exc
        # Chunks are each in time order; merge them (stable: same-time rows keep their order).
        return sorted(rows, key=lambda r: str(r.get("CreatedDate") or ""))

    def send_email_simple(
        self,
        addresses: Sequence[str],
        subject: str,
        body: str,
        *,
        related_record_id: str | None = None,
        sender_type: str | None = None,
    ) -> None:
        """Send one email with the ``emailSimple`` invocable action (only when KPI_SEND_EMAIL)."""
        if not addresses or not subject or not body:
            raise ValueError("send_email_simple needs at least one address, a subject and a body")
        item: dict[str, Any] = {
            "emailAddresses": ",".join(addresses),
            "emailSubject": subject,
            "emailBody": body,
        }
        if related_record_id:
            item.update(relatedRecordId=related_record_id, logEmailOnSend=True)
        if sender_type:
            item["senderType"] = sender_type
        # Not idempotent: a lost response must not send the email twice, so no resend on outages.
        results = self._call(
            "POST", "actions/standard/emailSimple", json={"inputs": [item]}, idempotent=False
        )
        result = (results or [{}])[0]
        if not result.get("isSuccess"):
            error = _save_error(result.get("errors") or [])
            raise SalesforceRequestError(
                f"emailSimple refused the email ({error}); check the addresses and that the integration user "
                "may send email (Setup > Deliverability)",
                error_code=error.status_code,
            )

    # --- HTTP with retries --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        counter: UpdateReport | None = None,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One REST call with re-auth once on 401 and bounded backoff on limits and outages.

        ``idempotent=False``: outages (5xx, dropped connections) are not retried, because the
        org may have acted before the response was lost; limit refusals still are.
        """
        reauthenticated = False
        failures = 0
        while True:
            sf, token = self._salesforce()
            if counter is not None:
                counter.attempts += 1
            try:
                return sf.restful(path, method=method, timeout=self.timeout_s, **kwargs)
            except SalesforceExpiredSession:
                if reauthenticated:
                    raise self._session_error() from None
                log.info("Salesforce session expired or invalid; re-authenticating once")
                self.tokens.invalidate(token)
                reauthenticated = True
                continue
            except (SimpleSalesforceError, requests.RequestException) as exc:
                error = _classify(exc, path)
            failures += 1
            self._raise_unless_retryable(error, failures, idempotent)
            log.warning(
                "Salesforce %s %s failed (%s); retry %d of %d",
                method,
                path,
                error,
                failures,
                self.max_attempts - 1,
            )
            self._backoff(failures)

    def _raise_unless_retryable(
        self, error: SalesforceError, failures: int, idempotent: bool
    ) -> None:
        unsafe_to_resend = not idempotent and isinstance(error, SalesforceUnavailableError)
        if (
            not error.retryable
            or failures >= self.max_attempts
            or _is_daily_limit(error)
            or unsafe_to_resend
        ):
            metrics.record_error("salesforce_rest")
            raise error

    def _session_error(self) -> SessionInvalidError:
        metrics.record_error("salesforce_auth")
        return SessionInvalidError(
            "Salesforce rejected the session (401 INVALID_SESSION_ID) again right after re-authenticating; "
            "check the connected app's IP relaxation and session policies, that the integration user is "
            "active, and that the instance URL is right (a static access token cannot be renewed)",
            error_code="INVALID_SESSION_ID",
            status=401,
        )

    def _salesforce(self) -> tuple[Salesforce, str]:
        """A simple-salesforce client for the current token (rebuilt when the token changes)."""
        try:
            token = self.tokens.token()
        except AuthError as exc:
            raise SessionInvalidError(str(exc), error_code=exc.error) from None
        with self._lock:
            if self._client is None or self._client_token != token.access_token:
                sf = Salesforce(
                    instance_url=token.instance_url,
                    session_id=token.access_token,
                    version=self.api_version,
                    session=self._session,
                )
                # simple-salesforce assumes https; honour the scheme the token endpoint returned
                # (always https for a real org, so this is the same code path everywhere).
                sf.base_url = f"{token.instance_url}/services/data/v{self.api_version}/"
                sf.headers["Sforce-Call-Options"] = f"client={self.client_id}"
                # REST runs the org's active Lead assignment rules on every update unless told
                # not to, which would overwrite the OwnerId the routing policy just wrote.
                sf.headers["Sforce-Auto-Assign"] = "TRUE" if self.auto_assign else "FALSE"
                self._client, self._client_token = sf, token.access_token
            return self._client, token.access_token

    def _relative(self, next_records_url: str) -> str:
        """``/services/data/vNN.N/query/<cursor>`` -> ``query/<cursor>`` for ``restful``."""
        marker = "/services/data/v"
        if not next_records_url.startswith(marker):
            raise SalesforceUnavailableError(
                f"unexpected nextRecordsUrl {next_records_url!r} from Salesforce"
            )
        return next_records_url.split("/", 4)[4]

    def _backoff(self, retry: int) -> None:
        """Exponential backoff with equal jitter: [d/2, d] for d = base * 2^(retry-1), capped."""
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2 ** (retry - 1))
        self._sleep(ceiling / 2 + self._rng.uniform(0, ceiling / 2))


# --- helpers --------------------------------------------------------------------------------


def merge_updates(updates: Iterable[RecordUpdate]) -> list[RecordUpdate]:
    """One update per record, in first-seen order; later fields win."""
    merged: dict[str, dict[str, Any]] = {}
    for update in updates:
        _check_record_id(update.record_id)
        merged.setdefault(update.record_id, {}).update(update.fields)
    return [RecordUpdate(record_id, fields) for record_id, fields in merged.items()]


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal (UTC, second precision; naive values are taken as UTC)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _collection_record(sobject: str, update: RecordUpdate) -> dict[str, Any]:
    return {"attributes": {"type": sobject}, "id": update.record_id, **update.fields}


def _save_error(errors: list[dict[str, Any]]) -> SaveError:
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


def _classify(exc: Exception, path: str) -> SalesforceError:
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


def _is_daily_limit(error: SalesforceError) -> bool:
    # The rolling 24 h allocation won't free up within a backoff; stop and let the outbox wait.
    return isinstance(error, RequestLimitError) and error.daily


def history_object(sobject: str) -> tuple[str, str]:
    """(history object, its parent-id field): Lead -> (LeadHistory, LeadId), Foo__c ->
    (Foo__History, ParentId)."""
    if sobject.endswith("__c"):
        return sobject[: -len("c")] + "History", "ParentId"
    return f"{sobject}History", f"{sobject}Id"


def _strip_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "attributes"}


def _select_list(fields: Sequence[str], required: Sequence[str]) -> str:
    names = list(dict.fromkeys([*required, *fields]))
    for name in names:
        _check_name(name, "field name")
    return ", ".join(names)


def _check_name(name: str, what: str) -> None:
    # Names go into URLs and SOQL: only API names, which also rules out injection.
    if not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not a Salesforce API name (letters, digits, underscores)"
        )


def _check_record_id(record_id: str) -> None:
    if not _RECORD_ID.match(record_id or ""):
        raise ValueError(f"record id {record_id!r} is not a 15- or 18-character Salesforce id")
