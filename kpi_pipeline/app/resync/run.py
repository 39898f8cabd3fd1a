"""Re-sync one window, or every open one: read, turn into events, apply, close."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from kpi_pipeline.app.resync.org import OrgDescription
from kpi_pipeline.app.resync.owner_history import OwnerChange
from kpi_pipeline.app.resync.planning import ReadPlan, plan_window
from kpi_pipeline.app.resync.ports import Processor, RecordReader, ResyncLedger
from kpi_pipeline.app.resync.record_events import ResyncSource, events_for_record
from kpi_pipeline.core.events import ChangeEvent, format_sf_datetime, to_epoch_ms
from kpi_pipeline.core.resync_windows import WINDOW_OPEN, ResyncWindow
from kpi_pipeline.core.workloads.records import RecordState

log = logging.getLogger(__name__)

EVENTS_PER_PROCESS_CALL = 1000  # bounds one ledger transaction of the processor


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


def _read(
    rest: RecordReader, plan: ReadPlan, org: OrgDescription
) -> dict[str, list[dict[str, Any]]]:
    if plan.ids:
        return {
            entity: rest.query_by_ids(entity, org.fields(entity).select, ids)
            for entity, ids in plan.ids.items()
        }
    assert plan.since is not None
    return {
        entity: rest.query_modified_since(entity, org.fields(entity).select, plan.since, plan.until)
        for entity in plan.entities
    }


def window_events(
    window: ResyncWindow,
    plan: ReadPlan,
    rows: Mapping[str, list[dict[str, Any]]],
    states: Mapping[tuple[str, str], RecordState],
    now: datetime,
    org: OrgDescription,
) -> tuple[list[ChangeEvent], int, int]:
    """(events, deletions, missing): the re-read as change events, entity by entity in
    the plan's order (Leads before the activities that answer them)."""
    source = ResyncSource(window)
    events: list[ChangeEvent] = []
    deleted = missing = 0
    for entity, entity_rows in rows.items():
        found = set()
        history: Mapping[str, list[OwnerChange]] = {}
        if entity == "Lead" and entity_rows:
            history = org.owner_changes([str(r.get("Id")) for r in entity_rows]) or {}
        for row in entity_rows:
            found.add(row.get("Id"))
            record_id = str(row.get("Id"))
            events += events_for_record(
                source,
                entity,
                row,
                states.get((entity, record_id)),
                org.fields(entity),
                history.get(record_id, ()),
            )
        for record_id in plan.ids.get(entity, ()):
            if record_id in found:
                continue
            state = states.get((entity, record_id))
            if state is None:
                missing += 1  # gone before the ledger ever saw it: nothing to delete
                continue
            # Not returned by the query: deleted (the query skips the recycle bin). The gap's
            # commit time is when the deletion happened at the latest we know of.
            at_ms = window.from_time_ms if window.from_time_ms is not None else to_epoch_ms(now)
            events.append(source.event(entity, record_id, "DELETE", at_ms, {}))
            deleted += 1
    return events, deleted, missing


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
        rows = _read(rest, plan, org)
        report.records_read = sum(len(r) for r in rows.values())
        keys = {(e, str(r.get("Id"))) for e, rs in rows.items() for r in rs}
        keys |= {(e, rid) for e, ids in plan.ids.items() for rid in ids}
        events, report.deleted, report.missing = window_events(
            window, plan, rows, ledger.record_states(keys), now, org
        )
        _apply(processor, events, report)
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


def _apply(processor: Processor, events: list[ChangeEvent], report: ResyncReport) -> None:
    for start in range(0, len(events), EVENTS_PER_PROCESS_CALL):
        chunk = events[start : start + EVENTS_PER_PROCESS_CALL]
        summary = processor.process(chunk)
        report.events_applied += len(chunk)
        report.routed += int(summary.get("routing", {}).get("routed", 0))
        report.first_responses += int(summary.get("first_touch", {}).get("improved", 0))


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
