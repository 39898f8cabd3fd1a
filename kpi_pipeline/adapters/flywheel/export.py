"""Day-window operations the Dagster assets call: ledger decisions → flywheel files → Elasticsearch.

``write_flywheel_days`` turns the ledger's decisions of a time window into records in
the emitter directory (idempotent: ids already on disk are skipped),
``validate_flywheel_days`` re-reads that window's files against the contract, and
``load_flywheel_days_to_elastic`` bulk-loads them (idempotent: ``create`` with the
deterministic ids). No Dagster here: the shell in ``kpi_pipeline/defs`` wraps these.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

from kpi_pipeline.adapters.flywheel.emitter import FlywheelEmitter, sorted_day_files
from kpi_pipeline.adapters.flywheel.loaders.to_elastic import ElasticLoader, ElasticLoadError
from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import read_directory
from kpi_pipeline.core.flywheel.records import record_day, record_from_decision
from kpi_pipeline.core.flywheel.schema import WORKLOAD_IDS, FlywheelRecordError, validate_record

MAX_LISTED_PROBLEMS = 50


class DecisionSource(Protocol):
    """What ``write_flywheel_days`` needs from the ledger."""

    def decisions_between(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> list[Any]: ...


@dataclass
class FlywheelDaysReport:
    decisions: int = 0
    written: int = 0
    already_logged: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)  # first MAX_LISTED_PROBLEMS messages


def write_flywheel_days(
    ledger: DecisionSource,
    directory: str | os.PathLike[str],
    *,
    start: datetime,
    end: datetime,
    client_id: str,
) -> FlywheelDaysReport:
    """Log every decision with ``start <= decided_at < end`` (aware datetimes) as a record.

    A decision that cannot become a valid record is counted and described in the report
    (the rest are still written), so one bad row does not hold back a day's log.
    """
    report = FlywheelDaysReport()
    with FlywheelEmitter(directory) as emitter:
        for decision in ledger.decisions_between(start, end):
            report.decisions += 1
            try:
                emitter.emit(record_from_decision(decision, client_id=client_id))
            except (FlywheelRecordError, ValueError) as exc:
                report.rejected += 1
                if len(report.rejections) < MAX_LISTED_PROBLEMS:
                    report.rejections.append(str(exc))
        emitter.flush()
        report.written = emitter.stats.written
        report.already_logged = emitter.stats.duplicates
    return report


def validate_flywheel_days(
    directory: str | os.PathLike[str], *, start: datetime, end: datetime
) -> tuple[list[str], int]:
    """Check the files of the days in [start, end): (problems, records checked).

    Each line must be valid JSON and a valid record, lie in its file's day, and carry an
    id not seen before in the workload's checked files.
    """
    root = Path(directory)
    problems: list[str] = []
    checked = 0
    for workload in WORKLOAD_IDS:
        folder = root / workload
        if not folder.is_dir():
            continue
        seen: set[str] = set()
        for path in sorted_day_files(folder):
            day = path.name[:10]
            day_start = datetime.combine(date.fromisoformat(day), time.min, tzinfo=UTC)
            if not (start < day_start + timedelta(days=1) and day_start < end):
                continue
            for number, line in enumerate(path.read_bytes().splitlines(), start=1):
                checked += 1
                where = f"{workload}/{path.name}:{number}"
                problem = _line_problem(line, day, workload, seen)
                if problem:
                    problems.append(f"{where}: {problem}")
    return problems[:MAX_LISTED_PROBLEMS] + _more(problems), checked


def _more(problems: list[str]) -> list[str]:
    hidden = len(problems) - MAX_LISTED_PROBLEMS
    return [f"... and {hidden} more"] if hidden > 0 else []


def _line_problem(line: bytes, day: str, workload: str, seen: set[str]) -> str | None:
    try:
        record = validate_record(json.loads(line)).to_dict()
    except ValueError as exc:  # JSONDecodeError and FlywheelRecordError are ValueErrors
        return str(exc)
    rid = record["response"]["id"]
    if record["workload_id"] != workload:
        return f"record {rid} has workload_id {record['workload_id']!r} but lies in {workload}/"
    if record_day(record) != day:
        return f"record {rid} is of day {record_day(record)} but lies in the {day} file"
    if rid in seen:
        return f"duplicate record id {rid}"
    seen.add(rid)
    return None


def load_flywheel_days_to_elastic(
    directory: str | os.PathLike[str], url: str, index: str, *, start: datetime, end: datetime
) -> dict[str, Any]:
    """Put the index template and bulk-load the window's records; returns the load report.

    Raises ``ElasticLoadError`` when any record still failed after the retries, so the
    run fails visibly; re-running is safe (records already indexed are not added again).
    """
    loader = ElasticLoader(url, index=index)
    loader.ensure_index_template()
    report = loader.load(read_directory(directory, since=start, until=end), refresh=True)
    summary = {"index": index, **report.to_dict()}
    if report.failed:
        first = "; ".join(
            f"{f.record_id}: HTTP {f.status} {f.error_type}: {f.reason}" for f in report.failed[:5]
        )
        raise ElasticLoadError(
            f"{len(report.failed)} flywheel record(s) failed to load into {index!r}: {first}"
        )
    return summary
