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

The HTTP with its retries is ``rest_transport``, the reading of failures ``rest_errors``, and
the checks and literals that go into URLs and SOQL ``soql``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import chain
from typing import Any

import requests

from kpi_pipeline.adapters.auth.tokens import TokenProvider
from kpi_pipeline.adapters.salesforce.rest_errors import save_error
from kpi_pipeline.adapters.salesforce.rest_transport import RestTransport
from kpi_pipeline.adapters.salesforce.soql import (
    check_name,
    check_record_id,
    history_object,
    quoted_id_chunks,
    select_list,
    soql_datetime,
    strip_attributes,
)
from kpi_pipeline.core.salesforce_rest import (
    HistoryUnavailableError,
    RecordUpdate,
    SalesforceError,
    SalesforceRequestError,
    SalesforceUnavailableError,
    SaveError,
    UpdateReport,
)

log = logging.getLogger(__name__)

MAX_COLLECTION_RECORDS = 200
_API_VERSION = re.compile(r"^\d{2,3}\.\d$")


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
        concurrent_requests: int = 1,
    ):
        """``concurrent_requests``: sObject Collections requests of one ``update_records``
        call in flight at once (each up to 200 records)."""
        if not _API_VERSION.match(api_version):
            raise ValueError(
                f"api_version {api_version!r} must look like '64.0' (KPI_SALESFORCE_API_VERSION)"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if concurrent_requests < 1:
            raise ValueError(
                f"concurrent_requests must be at least 1, got {concurrent_requests} "
                "(KPI_WRITEBACK_CONCURRENT_REQUESTS)"
            )
        self.concurrent_requests = concurrent_requests
        if not client_id or any(c in client_id for c in ",;= "):
            raise ValueError(
                f"client_id {client_id!r} must be a non-empty name without , ; = or spaces"
            )
        self.max_attempts = max_attempts  # also bounds the record-level retries of a chunk
        # The settings of the HTTP live on the transport (self._http.api_version, ...).
        self._http = RestTransport(
            token_provider,
            api_version=api_version,
            client_id=client_id,
            auto_assign=auto_assign,
            session=session or requests.Session(),
            max_attempts=max_attempts,
            base_backoff_s=base_backoff_s,
            max_backoff_s=max_backoff_s,
            timeout_s=timeout_s,
            sleep=sleep,
            rng=rng or random.Random(),
        )

    def __repr__(self) -> str:
        http = self._http
        return f"SalesforceRest(api_version={http.api_version!r}, client_id={http.client_id!r})"

    # --- write-back ------------------------------------------------------------------------

    def update_records(self, sobject: str, updates: Sequence[RecordUpdate]) -> UpdateReport:
        """Update records with sObject Collections (allOrNone false, <= 200 per request).

        Updates of the same record are merged first (later fields win). Requests go out in
        waves of ``concurrent_requests``: a real org answers each in hundreds of
        milliseconds, and one at a time a large drain would wait for every answer in turn.
        After a wave in which the org was unreachable or refused us, the rest are left
        unconfirmed and unsent.
        """
        check_name(sobject, "sObject type")
        merged = merge_updates(updates)
        report = UpdateReport()
        chunks = [
            merged[i : i + MAX_COLLECTION_RECORDS]
            for i in range(0, len(merged), MAX_COLLECTION_RECORDS)
        ]
        for start in range(0, len(chunks), self.concurrent_requests):
            wave = chunks[start : start + self.concurrent_requests]
            for chunk_report in self._send_wave(sobject, wave):
                _absorb(report, chunk_report)
            if report.error is not None:
                later = chunks[start + len(wave) :]
                report.unconfirmed.extend(u.record_id for chunk in later for u in chunk)
                break
        return report

    def _send_wave(self, sobject: str, wave: list[list[RecordUpdate]]) -> list[UpdateReport]:
        """One report per chunk, in chunk order; the chunks sent at once."""
        reports = [UpdateReport() for _ in wave]
        if len(wave) == 1:
            self._update_chunk(sobject, wave[0], reports[0])
            return reports
        with ThreadPoolExecutor(len(wave), thread_name_prefix="sf-collections") as pool:
            for sent in [
                pool.submit(self._update_chunk, sobject, chunk, chunk_report)
                for chunk, chunk_report in zip(wave, reports, strict=True)
            ]:
                sent.result()
        return reports

    def _update_chunk(self, sobject: str, chunk: list[RecordUpdate], report: UpdateReport) -> None:
        pending = chunk
        for attempt in range(1, self.max_attempts + 1):
            body = {
                "allOrNone": False,
                "records": [_collection_record(sobject, u) for u in pending],
            }
            try:
                results = self._http.call("PATCH", "composite/sobjects", json=body, counter=report)
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
                self._http.backoff(attempt)
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
            error = save_error(result.get("errors") or [])
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
        check_name(sobject, "sObject type")
        check_record_id(record_id)
        for name in fields:
            check_name(name, "field name")
        params = {"fields": ",".join(fields)} if fields else None
        try:
            record = self._http.call("GET", f"sobjects/{sobject}/{record_id}", params=params)
        except SalesforceRequestError as exc:
            if exc.status == 404:
                return None
            raise
        return strip_attributes(record or {})

    def describe(self, sobject: str) -> dict[str, Any]:
        """``sobjects/<Type>/describe``: the sObject's fields (name, type, compoundFieldName)."""
        check_name(sobject, "sObject type")
        return self._http.call("GET", f"sobjects/{sobject}/describe")

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every row of a SOQL query (``nextRecordsUrl`` followed), without ``attributes``."""
        return list(chain.from_iterable(self.query_pages(soql)))

    def query_pages(self, soql: str) -> Iterator[list[dict[str, Any]]]:
        """A SOQL query's rows a page at a time (up to 2,000 rows each from a real org),
        without ``attributes``; the next page (``nextRecordsUrl``) is asked for only when
        the caller wants it, so a large result never has to fit in memory at once. The
        org keeps a query locator for 15 minutes between pages."""
        page = self._http.call("GET", "query/", params={"q": soql})
        yield [strip_attributes(r) for r in page.get("records", [])]
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = self._http.call("GET", self._http.relative(page["nextRecordsUrl"]))
            yield [strip_attributes(r) for r in page.get("records", [])]

    def query_modified_since(
        self, sobject: str, fields: Sequence[str], since: datetime, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Records with ``since <= LastModifiedDate [< until]``, oldest first."""
        return list(chain.from_iterable(self.pages_modified_since(sobject, fields, since, until)))

    def pages_modified_since(
        self, sobject: str, fields: Sequence[str], since: datetime, until: datetime | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """``query_modified_since`` a page at a time (re-sync windows)."""
        check_name(sobject, "sObject type")
        select = select_list(fields, ("Id", "LastModifiedDate"))
        where = f"LastModifiedDate >= {soql_datetime(since)}"
        if until is not None:
            where += f" AND LastModifiedDate < {soql_datetime(until)}"
        return self.query_pages(
            f"SELECT {select} FROM {sobject} WHERE {where} ORDER BY LastModifiedDate"
        )

    def query_by_ids(
        self, sobject: str, fields: Sequence[str], ids: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Records by id (gap events name their records), 200 ids per query."""
        return list(chain.from_iterable(self.pages_by_ids(sobject, fields, ids)))

    def pages_by_ids(
        self, sobject: str, fields: Sequence[str], ids: Iterable[str]
    ) -> Iterator[list[dict[str, Any]]]:
        """``query_by_ids`` a page at a time."""
        check_name(sobject, "sObject type")
        select = select_list(fields, ("Id",))
        chunks = list(quoted_id_chunks(ids))  # every id checked before the first request
        return (
            page
            for quoted in chunks
            for page in self.query_pages(f"SELECT {select} FROM {sobject} WHERE Id IN ({quoted})")
        )

    def field_history(self, sobject: str, field: str, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The history rows of one tracked field of those records, oldest first, 200 ids
        per query: ``Id``, the parent id (``LeadId`` for LeadHistory, ``ParentId`` for a
        custom object's ``Foo__History``), ``Field``, ``OldValue``, ``NewValue``,
        ``CreatedDate``, ``CreatedById``. Lead owner changes are ``Field = 'Owner'``.

        Raises ``HistoryUnavailableError`` when the org answers INVALID_TYPE."""
        check_name(sobject, "sObject type")
        check_name(field, "history field name")
        history, parent = history_object(sobject)
        select = f"{parent}, Field, OldValue, NewValue, CreatedDate, CreatedById"
        rows: list[dict[str, Any]] = []
        for quoted in quoted_id_chunks(ids):
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
        results = self._http.call(
            "POST", "actions/standard/emailSimple", json={"inputs": [item]}, idempotent=False
        )
        result = (results or [{}])[0]
        if not result.get("isSuccess"):
            error = save_error(result.get("errors") or [])
            raise SalesforceRequestError(
                f"emailSimple refused the email ({error}); check the addresses and that the integration user "
                "may send email (Setup > Deliverability)",
                error_code=error.status_code,
            )


def merge_updates(updates: Iterable[RecordUpdate]) -> list[RecordUpdate]:
    """One update per record, in first-seen order; later fields win."""
    merged: dict[str, dict[str, Any]] = {}
    for update in updates:
        check_record_id(update.record_id)
        merged.setdefault(update.record_id, {}).update(update.fields)
    return [RecordUpdate(record_id, fields) for record_id, fields in merged.items()]


def _absorb(report: UpdateReport, part: UpdateReport) -> None:
    """Add one request's outcome to the call's report (the first error stands)."""
    report.succeeded.extend(part.succeeded)
    report.failed.update(part.failed)
    report.unconfirmed.extend(part.unconfirmed)
    report.attempts += part.attempts
    report.error = report.error or part.error


def _collection_record(sobject: str, update: RecordUpdate) -> dict[str, Any]:
    return {"attributes": {"type": sobject}, "id": update.record_id, **update.fields}
