"""Deterministic JSONL exports of flywheel records and distillation training sets.

``write_jsonl`` orders records by (timestamp, workload, id) and writes canonical JSON
(sorted keys, compact), so the same records always give byte-identical files whatever
order they arrived in. ``export_training_set`` writes the data-flywheel distillation
format: per workload one line ``{"messages": request.messages + [response.choices[0].message]}``
(the messages JSONL that OpenAI fine-tuning and NeMo Customizer read).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from kpi_pipeline.adapters.flywheel.emitter import sorted_day_files
from kpi_pipeline.core.flywheel.records import canonical_json, record_id, sort_key
from kpi_pipeline.core.flywheel.schema import WORKLOAD_IDS, FlywheelRecord, validate_record


def write_jsonl(
    records: Iterable[Mapping[str, Any] | FlywheelRecord], path: str | os.PathLike[str]
) -> int:
    """Write ``records`` to ``path`` in the stable order, replacing it atomically. Returns the count.

    Records are validated first (a ``FlywheelRecord`` already is), and repeated ids are
    written once.
    """
    unique: dict[str, dict[str, Any]] = {}
    for record in records:
        model = record if isinstance(record, FlywheelRecord) else validate_record(record)
        document = model.to_dict()
        unique.setdefault(record_id(document), document)
    ordered = sorted(unique.values(), key=sort_key)
    _write_lines_atomically(Path(path), (canonical_json(doc) for doc in ordered))
    return len(ordered)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of one JSONL file, validated; errors name the file and line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"flywheel JSONL file {source} does not exist")
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{source}:{number}: not valid JSON ({exc})") from None
            try:
                yield validate_record(record).to_dict()
            except ValueError as exc:
                raise ValueError(f"{source}:{number}: {exc}") from None


def read_directory(
    directory: str | os.PathLike[str],
    *,
    workload_id: str | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
) -> list[dict[str, Any]]:
    """Records of an emitter directory (``<workload>/<day>[-NNN].jsonl``), in the stable order.

    ``since`` is inclusive and ``until`` exclusive: UTC days, or aware datetimes. Files of
    days outside the range are skipped; records are then filtered by their own timestamp
    (not only the file name, so a hand-placed file cannot leak).
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"flywheel directory {root} does not exist")
    if workload_id is not None and workload_id not in WORKLOAD_IDS:
        raise ValueError(f"workload {workload_id!r} is not one of {', '.join(WORKLOAD_IDS)}")
    start = _epoch_bound(since, "since")
    end = _epoch_bound(until, "until")
    workloads = [workload_id] if workload_id else list(WORKLOAD_IDS)
    selected: dict[str, dict[str, Any]] = {}
    for workload in workloads:
        folder = root / workload
        if not folder.is_dir():
            continue
        for path in sorted_day_files(folder):
            if not _day_may_overlap(path, start, end):
                continue
            for record in iter_jsonl(path):
                if (start is None or record["timestamp"] >= start) and (
                    end is None or record["timestamp"] < end
                ):
                    selected.setdefault(record_id(record), record)
    return sorted(selected.values(), key=sort_key)


def _epoch_bound(value: date | datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}={value.isoformat()} has no timezone; pass an aware datetime")
        return math.ceil(value.timestamp())
    return _day_start(value)


def _day_may_overlap(path: Path, start: int | None, end: int | None) -> bool:
    """False when the file's day (from its name) lies wholly outside [start, end)."""
    day_start = _day_start(date.fromisoformat(path.name[:10]))
    return (end is None or day_start < end) and (start is None or day_start + 86400 > start)


def training_example(record: dict[str, Any]) -> dict[str, Any]:
    """The distillation line of one record: request messages plus the first choice's message."""
    return {
        "messages": [*record["request"]["messages"], record["response"]["choices"][0]["message"]]
    }


def export_training_set(
    records: Iterable[dict[str, Any]], out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write ``<out_dir>/<workload_id>.jsonl`` training files; returns the paths by workload."""
    by_workload: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        document = validate_record(record).to_dict()
        by_workload.setdefault(document["workload_id"], {}).setdefault(
            record_id(document), document
        )
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for workload, unique in sorted(by_workload.items()):
        path = target / f"{workload}.jsonl"
        ordered = sorted(unique.values(), key=sort_key)
        _write_lines_atomically(path, (canonical_json(training_example(r)) for r in ordered))
        written[workload] = path
    return written


def _day_start(day: date) -> int:
    return int(datetime.combine(day, time.min, tzinfo=UTC).timestamp())


def _write_lines_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; exports are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
