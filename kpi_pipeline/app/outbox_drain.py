"""Drains the write-back outbox to Salesforce (apply -> Salesforce write-back).

``OutboxPort`` hands out claimed record updates (``kpi_pipeline.app.writeback.LedgerOutbox``
reads the ledger's current values of each record's dirty fields); ``drain_outbox``
claims them in batches, merges updates to the same record (later fields win), sends them
with sObject Collections and reports back per item:

* confirmed by Salesforce -> ``mark_sent`` (never before the SaveResult says success);
* refused for good (e.g. ``INVALID_FIELD``) -> ``mark_failed(retryable=False)``;
* still locked after the retries, or unconfirmed because the org went away mid-request ->
  ``mark_failed(retryable=True)``: back to pending for the next drain. Nothing is lost, and
  re-sending is harmless because the next drain reads the current values again;
* no longer held (the claim's lease ran out and another drainer took it): not sent.

A drain stops after a batch that left anything for later, so it never spins on the same items
while the org is struggling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kpi_pipeline.core.salesforce_rest import RecordUpdate, UpdateReport
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One queued update: set ``fields`` on ``sobject`` record ``record_id``."""

    id: int
    sobject: str
    record_id: str
    fields: dict[str, Any]


class RecordUpdater(Protocol):
    """What the drain needs of the org: ``kpi_pipeline.adapters.salesforce.rest.SalesforceRest``."""

    def update_records(self, sobject: str, updates: Sequence[RecordUpdate]) -> UpdateReport:
        """Update the records (sObject Collections), reporting each one's outcome."""


class OutboxPort(Protocol):
    """The outbox as the drain sees it (the ledger implements it)."""

    def claim_pending(self, limit: int) -> Sequence[OutboxItem]:
        """Up to ``limit`` unsent items, oldest first, that no other drainer holds."""

    def still_held(self, ids: Sequence[int]) -> set[int]:
        """Of ``ids``, those this drain still holds (a claim can be lost when its lease ran
        out); only those are sent."""

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Salesforce confirmed these items."""

    def mark_failed(self, id: int, error: str, *, retryable: bool) -> None:
        """This item failed; retryable ones are offered again by a later claim."""


@dataclass
class DrainReport:
    claimed: int = 0
    sent: list[int] = field(default_factory=list)  # outbox item ids
    failed: dict[int, str] = field(default_factory=dict)  # permanent failures
    retry_later: dict[int, str] = field(default_factory=dict)  # back to pending
    batches: int = 0
    requests: int = 0  # collection requests sent, retries included
    error: str | None = None  # why the drain stopped early (org unreachable, limits, auth)

    @property
    def complete(self) -> bool:
        """Everything claimed reached a final state (sent or failed for good)."""
        return not self.retry_later and self.error is None


@dataclass
class _MergedRecord:
    sobject: str
    record_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    item_ids: list[int] = field(default_factory=list)


def merge_items(items: Sequence[OutboxItem]) -> list[_MergedRecord]:
    """One update per (sobject, record), applying items in id order so later fields win."""
    merged: dict[tuple[str, str], _MergedRecord] = {}
    for item in sorted(items, key=lambda i: i.id):
        record = merged.setdefault(
            (item.sobject, item.record_id), _MergedRecord(item.sobject, item.record_id)
        )
        record.fields.update(item.fields)
        record.item_ids.append(item.id)
    return list(merged.values())


def drain_outbox(outbox: OutboxPort, rest: RecordUpdater, *, batch_size: int = 200) -> DrainReport:
    """Send pending outbox items to Salesforce until none are left or the org pushes back."""
    if batch_size < 1:
        raise ValueError(f"drain_outbox(batch_size={batch_size}): batch_size must be at least 1")
    report = DrainReport()
    seen: set[int] = set()
    while True:
        claimed = outbox.claim_pending(batch_size)
        items = [i for i in claimed if i.id not in seen]
        changed_again = [i for i in claimed if i.id in seen]
        for item in changed_again:
            # Changed again while this drain was sending it: give it back for the next
            # drain rather than spin on a record that keeps changing.
            outbox.mark_failed(item.id, "changed again during this drain", retryable=True)
            report.retry_later[item.id] = "changed again during this drain"
        if not items:
            break
        seen.update(i.id for i in items)
        report.claimed += len(items)
        report.batches += 1
        before = len(report.retry_later)
        _send_batch(outbox, rest, merge_items(items), report)
        if report.error is not None or len(report.retry_later) > before:
            break  # leave the rest for the next drain instead of hammering a struggling org
        if changed_again:
            # End here, so the next drain sends them (oldest first) at once. A drain that
            # went on while new rows kept coming (the stream worker drains beside
            # processing) would give them back round after round and never send them.
            break
    if report.claimed:
        log.info(
            "outbox drain: %d claimed, %d sent, %d failed, %d for later%s",
            report.claimed,
            len(report.sent),
            len(report.failed),
            len(report.retry_later),
            f" (stopped: {report.error})" if report.error else "",
        )
    return report


def _send_batch(
    outbox: OutboxPort, rest: RecordUpdater, records: list[_MergedRecord], report: DrainReport
) -> None:
    by_sobject: dict[str, list[_MergedRecord]] = {}
    for record in records:
        by_sobject.setdefault(record.sobject, []).append(record)
    for sobject, group in by_sobject.items():
        if report.error is not None:
            # The org stopped answering: the other types in this batch were not attempted.
            _later(outbox, group, f"not attempted: {report.error}", report)
            continue
        held = outbox.still_held([i for r in group for i in r.item_ids])
        lost = [r for r in group if not set(r.item_ids) <= held]
        if lost:
            # Our lease ran out and another drainer holds these now: it sends the current
            # values, and a late send from us could only be older.
            log.warning("outbox claims lost before sending: %s", [r.record_id for r in lost])
            group = [r for r in group if set(r.item_ids) <= held]
            if not group:
                continue
        try:
            result = rest.update_records(
                sobject, [RecordUpdate(r.record_id, r.fields) for r in group]
            )
        except ValueError as exc:
            # Not sendable at all (bad sObject name or record id): an operator must look.
            for record in group:
                _fail(outbox, record, str(exc), report)
            continue
        _file_results(outbox, group, result, report)


def _file_results(
    outbox: OutboxPort, group: list[_MergedRecord], result: UpdateReport, report: DrainReport
) -> None:
    report.requests += result.attempts
    by_id = {r.record_id: r for r in group}
    sent = [item_id for record_id in result.succeeded for item_id in by_id[record_id].item_ids]
    if sent:
        outbox.mark_sent(sent)
        report.sent.extend(sent)
    for record_id, error in result.failed.items():
        if error.retryable:
            _later(outbox, [by_id[record_id]], str(error), report)
        else:
            _fail(outbox, by_id[record_id], str(error), report)
    if result.error is not None:
        report.error = str(result.error)
        reason = f"unconfirmed: {result.error}"
        _later(outbox, [by_id[record_id] for record_id in result.unconfirmed], reason, report)


def _later(
    outbox: OutboxPort, records: list[_MergedRecord], reason: str, report: DrainReport
) -> None:
    for record in records:
        for item_id in record.item_ids:
            outbox.mark_failed(item_id, reason, retryable=True)
            report.retry_later[item_id] = reason


def _fail(outbox: OutboxPort, record: _MergedRecord, reason: str, report: DrainReport) -> None:
    metrics.record_error("writeback")
    log.warning("write-back of %s %s failed for good: %s", record.sobject, record.record_id, reason)
    for item_id in record.item_ids:
        outbox.mark_failed(item_id, reason, retryable=False)
        report.failed[item_id] = reason
