"""Re-sync one window, or every open one: read, turn into events, apply, close."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from kpi_pipeline.app.resync.org import EntityFields, OrgDescription
from kpi_pipeline.app.resync.owner_history import OwnerChange
from kpi_pipeline.app.resync.planning import ReadPlan, plan_window
from kpi_pipeline.app.resync.ports import Processor, RecordReader, ResyncLedger
from kpi_pipeline.app.resync.record_events import ResyncSource, events_for_record
from kpi_pipeline.core.events import ChangeEvent, format_sf_datetime, to_epoch_ms
from kpi_pipeline.core.resync_windows import WINDOW_OPEN, ResyncWindow

log = logging.getLogger(__name__)

EVENTS_PER_PROCESS_CALL = 1000  # bounds one ledger transaction of the processor

T = TypeVar("T")


@dataclass
class ResyncReport:
    """What one window's re-sync did; ``status`` is closed, failed or skipped."""

    window_id: int
    channel: str
    reason: str
    status: str
    records_read: int = 0
    events_applied: int = 0
    deleted: int = 0
    missing: int = 0
    entities: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    error: str | None = None
    routed: int = 0
    first_responses: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Page:
    """One page of the re-read: an entity's rows, and for Leads their owner history."""

    entity: str
    rows: list[dict[str, Any]]
    ids: list[str]  # the rows' Ids, in order
    owner_history: Mapping[str, Sequence[OwnerChange]]


class _WindowHistory:
    """The owner history of a window's Leads, page by page; warns once, at the end, when
    the org had none for any of them."""

    def __init__(self, org: OrgDescription) -> None:
        self.org = org
        self.leads = 0
        self.found = False

    def of(self, ids: list[str]) -> Mapping[str, Sequence[OwnerChange]]:
        self.leads += len(ids)
        changes = self.org.owner_changes(ids) or {}
        self.found = self.found or bool(changes)
        return changes

    def warn_if_missing(self) -> None:
        if self.leads and not self.found:
            self.org.warn_no_owner_history(self.leads)


def _pages(
    rest: RecordReader, plan: ReadPlan, fields: Mapping[str, EntityFields], org: OrgDescription
) -> Iterator[_Page]:
    """The window's re-read a page at a time (a SOQL page: up to 2,000 rows from a real org),
    entity by entity in the plan's order (Leads before the activities that answer them)."""
    if plan.ids:
        reads = [
            (entity, rest.pages_by_ids(entity, fields[entity].select, ids))
            for entity, ids in plan.ids.items()
        ]
    else:
        assert plan.since is not None
        reads = [
            (
                entity,
                rest.pages_modified_since(entity, fields[entity].select, plan.since, plan.until),
            )
            for entity in plan.entities
        ]
    history = _WindowHistory(org)
    for entity, pages in reads:
        for rows in pages:
            ids = [str(row.get("Id")) for row in rows]
            yield _Page(entity, rows, ids, history.of(ids) if entity == "Lead" else {})
    history.warn_if_missing()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, the next one read in a background thread while the caller works on the
    current one: REST round trips overlap with applying the page before (bench/RESULTS.md,
    Re-sync). At most one item is read ahead; an error reading it is raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resync-read") as reader:
        upcoming = reader.submit(next, items, _DONE)
        while (item := upcoming.result()) is not _DONE:
            upcoming = reader.submit(next, items, _DONE)
            yield item


_DONE: Any = object()


class _Batches:
    """Events applied ``EVENTS_PER_PROCESS_CALL`` at a time, in the order they are added."""

    def __init__(self, processor: Processor, report: ResyncReport) -> None:
        self.processor = processor
        self.report = report
        self.pending: list[ChangeEvent] = []

    def add(self, events: Sequence[ChangeEvent]) -> None:
        self.pending += events
        while len(self.pending) >= EVENTS_PER_PROCESS_CALL:
            self._process(self.pending[:EVENTS_PER_PROCESS_CALL])
            del self.pending[:EVENTS_PER_PROCESS_CALL]

    def flush(self) -> None:
        if self.pending:
            self._process(self.pending)
            self.pending = []

    def _process(self, chunk: list[ChangeEvent]) -> None:
        summary = self.processor.process(chunk)
        self.report.events_applied += len(chunk)
        self.report.routed += int(summary.get("routing", {}).get("routed", 0))
        self.report.first_responses += int(summary.get("first_touch", {}).get("improved", 0))


def _apply_window(
    ledger: ResyncLedger,
    rest: RecordReader,
    processor: Processor,
    window: ResyncWindow,
    plan: ReadPlan,
    org: OrgDescription,
    report: ResyncReport,
    *,
    now: datetime,
) -> None:
    """Re-read the window's records and apply them as change events, a page at a time, so
    that memory stays bounded by a page whatever the window's size; the next page is read
    while this one is applied. Records a gap window names that the org no longer returns
    are deleted, after the rows."""
    source = ResyncSource(window)
    entities = list(plan.ids) or plan.entities
    fields = {entity: org.fields(entity) for entity in entities}
    batches = _Batches(processor, report)
    found: dict[str, set[str]] = {entity: set() for entity in plan.ids}
    for page in read_ahead(_pages(rest, plan, fields, org)):
        report.records_read += len(page.rows)
        states = ledger.record_states({(page.entity, record_id) for record_id in page.ids})
        if page.entity in found:  # a gap window's named records: which ones came back
            found[page.entity].update(page.ids)
        for row, record_id in zip(page.rows, page.ids, strict=True):
            batches.add(
                events_for_record(
                    source,
                    page.entity,
                    row,
                    states.get((page.entity, record_id)),
                    fields[page.entity],
                    page.owner_history.get(record_id, ()),
                )
            )
    batches.add(_deletions(ledger, source, window, plan, found, report, now))
    batches.flush()


def _deletions(
    ledger: ResyncLedger,
    source: ResyncSource,
    window: ResyncWindow,
    plan: ReadPlan,
    found: Mapping[str, set[str]],
    report: ResyncReport,
    now: datetime,
) -> list[ChangeEvent]:
    """A DELETE for each record the window names that the org did not return (the query
    skips the recycle bin) and the ledger knows; the others are counted as missing."""
    gone = {(e, rid) for e, ids in plan.ids.items() for rid in ids if rid not in found[e]}
    states = ledger.record_states(gone) if gone else {}
    # The gap's commit time is when the deletion happened at the latest we know of.
    at_ms = window.from_time_ms if window.from_time_ms is not None else to_epoch_ms(now)
    events = []
    for entity, ids in plan.ids.items():
        for record_id in dict.fromkeys(ids):
            if (entity, record_id) not in gone:
                continue
            if (entity, record_id) not in states:
                report.missing += 1  # gone before the ledger ever saw it: nothing to delete
                continue
            events.append(source.event(entity, record_id, "DELETE", at_ms, {}))
            report.deleted += 1
    return events


def resync_window(
    ledger: ResyncLedger,
    rest: RecordReader,
    processor: Processor,
    window: ResyncWindow,
    *,
    now: datetime,
    entities_for_channel: Callable[[str], Sequence[str]] | None = None,
    org: OrgDescription | None = None,
) -> ResyncReport:
    """Re-read and apply one window, then close it; on failure leave it open with the error.

    ``org``: where fields and channel entities come from (default: the staged GetSchema
    answers, else describe over ``rest``); ``entities_for_channel`` overrides the latter."""
    report = ResyncReport(window.id, window.channel, window.reason, "skipped")
    if window.status != WINDOW_OPEN:
        return report
    org = org or OrgDescription(ledger, rest)
    try:
        plan = plan_window(window, now, entities_for_channel or org.entities_for_channel)
        report.entities = sorted(plan.ids) or list(plan.entities)
        report.since = format_sf_datetime(plan.since) or None
        report.until = format_sf_datetime(plan.until) or None
        _apply_window(ledger, rest, processor, window, plan, org, report, now=now)
    except Exception as exc:  # any failure: the window stays open and says why
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"[:1000]
        log.warning("re-sync of window %s (%s) failed: %s", window.id, window.reason, report.error)
        _note_failure(ledger, window.id, report, now)
        return report
    ledger.close_resync_window(
        window.id, detail={"resync": _closing_detail(report, now), "resync_error": None}
    )
    report.status = "closed"
    return report


def _closing_detail(report: ResyncReport, now: datetime) -> dict[str, Any]:
    return {
        "records_read": report.records_read,
        "events_applied": report.events_applied,
        "deleted": report.deleted,
        "missing": report.missing,
        "entities": report.entities,
        "since": report.since,
        "until": report.until,
        "finished_at": format_sf_datetime(now),
    }


def _note_failure(
    ledger: ResyncLedger, window_id: int, report: ResyncReport, now: datetime
) -> None:
    """Keep the window open; record the error and the attempt count in its detail (the
    count drives ``windows_due``'s backoff). A window closed meanwhile by a concurrent run
    is left alone: nothing to report."""

    def noted(detail: dict[str, Any]) -> dict[str, Any]:
        detail.update(
            resync_error=report.error,
            resync_failed_at=format_sf_datetime(now),
            resync_attempts=int(detail.get("resync_attempts") or 0) + 1,
        )
        return detail

    ledger.update_open_resync_window(window_id, noted)


def resync_open_windows(
    ledger: ResyncLedger,
    rest: RecordReader,
    processor: Processor,
    *,
    now: datetime,
    entities_for_channel: Callable[[str], Sequence[str]] | None = None,
    window_ids: Collection[int] | None = None,
) -> list[ResyncReport]:
    """Re-sync every open window (or those of ``window_ids`` still open), oldest first.

    One failing window does not stop the others; each report says what happened. What to
    re-read comes from the org (``OrgDescription``): never from the sandbox's schemas.
    """
    org = OrgDescription(ledger, rest)
    windows = ledger.open_resync_windows()
    if window_ids is not None:
        wanted = set(window_ids)
        windows = [w for w in windows if w.id in wanted]
    return [
        resync_window(
            ledger,
            rest,
            processor,
            window,
            now=now,
            entities_for_channel=entities_for_channel,
            org=org,
        )
        for window in windows
    ]
