"""Append flywheel records to daily JSONL files, atomically and without duplicates.

Layout: ``<directory>/<workload_id>/<YYYY-MM-DD>.jsonl`` by the record's timestamp (UTC
day); when a day file would grow past ``max_bytes`` the day continues in
``<YYYY-MM-DD>-001.jsonl``, ``-002`` and so on. One line per record: canonical JSON
(sorted keys, compact), so the same record is always the same bytes.

Guarantees:

- **Valid only**: every record is validated against the contract before it is buffered.
- **Whole lines**: a flush writes each file's new lines with one ``write`` and an
  ``fsync``; if the write fails, the file is truncated back to where it was, so a reader
  never sees a partial line. A partial last line left by a killed process is cut off the
  next time a flush holds the workload's lock.
- **No duplicate ids**: the ids already on disk are indexed per workload (all days, all
  parts; read once on first use, then only the bytes appended since), including lines
  other processes appended: a flush holds an exclusive ``flock`` on the workload
  directory and re-reads what changed before it writes.
- **Thread-safe**: one emitter may be shared by threads.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kpi_pipeline.core.flywheel.records import canonical_json, record_day
from kpi_pipeline.core.flywheel.schema import FlywheelRecordError, validate_record
from kpi_pipeline.telemetry.metrics import record_error

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DAY_FILE_RE = re.compile(r"^(?P<day>\d{4}-\d{2}-\d{2})(?:-(?P<part>\d{3}))?\.jsonl$")
LOCK_FILE = ".lock"


def day_file_name(day: str, part: int) -> str:
    """``2026-01-01.jsonl`` for part 0, ``2026-01-01-003.jsonl`` for part 3."""
    return f"{day}.jsonl" if part == 0 else f"{day}-{part:03d}.jsonl"


@dataclass(frozen=True)
class EmitterStats:
    written: int
    rejected: int
    duplicates: int
    pending: int


@dataclass
class _WorkloadIndex:
    """Ids on disk for one workload, and how far each file has been read."""

    ids: set[str] = field(default_factory=set)
    read_up_to: dict[str, int] = field(default_factory=dict)  # file name -> bytes read

    def last_part(self, day: str) -> tuple[int, int]:
        """(part number, size) of the newest file of ``day``; (0, 0) when there is none."""
        best = (0, 0)
        for name, size in self.read_up_to.items():
            match = DAY_FILE_RE.match(name)
            if match and match["day"] == day:
                part = int(match["part"] or 0)
                if part >= best[0]:
                    best = (part, size)
        return best


class FlywheelEmitter:
    """Validates, batches and appends flywheel records (see module docstring)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, max_bytes: int = 64 * MiB, batch_size: int = 500
    ) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes={max_bytes} is too small; use at least 1024 bytes")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self._lock = threading.RLock()
        self._pending: list[dict[str, Any]] = []
        self._pending_ids: set[str] = set()
        self._indexes: dict[str, _WorkloadIndex] = {}
        self._written = self._rejected = self._duplicates = 0

    # --- public API ---------------------------------------------------------------------
    def emit(self, record: dict[str, Any]) -> Literal["buffered", "duplicate"]:
        """Buffer one record (flushing when the batch is full).

        Returns ``"duplicate"`` when its id is already on disk or buffered. Raises
        ``FlywheelRecordError`` (and counts a rejection) when the record is invalid.
        """
        try:
            document = validate_record(record).to_dict()
        except FlywheelRecordError:
            with self._lock:
                self._rejected += 1
            record_error("flywheel")
            raise
        rid = document["response"]["id"]
        with self._lock:
            index = self._index(document["workload_id"])
            if rid in index.ids or rid in self._pending_ids:
                self._duplicates += 1
                return "duplicate"
            self._pending.append(document)
            self._pending_ids.add(rid)
            if len(self._pending) >= self.batch_size:
                self._flush_locked()
        return "buffered"

    def emit_many(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.emit(record)

    def flush(self) -> int:
        """Write everything buffered; returns how many records were written."""
        with self._lock:
            return self._flush_locked()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> FlywheelEmitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                written=self._written,
                rejected=self._rejected,
                duplicates=self._duplicates,
                pending=len(self._pending),
            )

    def files(self, workload_id: str | None = None) -> list[Path]:
        """The day files written so far, in (workload, day, part) order."""
        workloads = [workload_id] if workload_id else sorted(self._workload_dirs())
        paths: list[Path] = []
        for workload in workloads:
            folder = self.directory / workload
            if folder.is_dir():
                paths.extend(sorted_day_files(folder))
        return paths

    # --- internals ----------------------------------------------------------------------
    def _workload_dirs(self) -> Iterator[str]:
        return (p.name for p in self.directory.iterdir() if p.is_dir())

    def _index(self, workload_id: str) -> _WorkloadIndex:
        index = self._indexes.get(workload_id)
        if index is None:
            index = self._indexes[workload_id] = _WorkloadIndex()
            self._catch_up(workload_id, index, holding_lock=False)
        return index

    def _catch_up(self, workload_id: str, index: _WorkloadIndex, *, holding_lock: bool) -> None:
        """Index the complete lines appended (by anyone) since the last read."""
        folder = self.directory / workload_id
        if not folder.is_dir():
            return
        for path in sorted_day_files(folder):
            offset = index.read_up_to.get(path.name, 0)
            size = path.stat().st_size
            if size < offset:  # replaced or truncated by someone else: read it again
                offset = 0
            if size > offset:
                offset = self._read_ids(path, offset, index.ids, holding_lock=holding_lock)
            index.read_up_to[path.name] = offset

    @staticmethod
    def _read_ids(path: Path, offset: int, ids: set[str], *, holding_lock: bool) -> int:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        complete = chunk.rfind(b"\n") + 1
        for number, line in enumerate(chunk[:complete].splitlines(), start=1):
            try:
                ids.add(json.loads(line)["response"]["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s: unreadable line %d after byte %d skipped", path, number, offset)
        end = offset + complete
        if complete < len(chunk) and holding_lock:
            # Nobody writes while we hold the lock, so this tail was left by a killed writer.
            log.warning(
                "%s: cutting off a partial last line (%d bytes)", path, len(chunk) - complete
            )
            os.truncate(path, end)
        return end

    def _flush_locked(self) -> int:
        written_before = self._written
        for workload_id in sorted({document["workload_id"] for document in self._pending}):
            documents = [d for d in self._pending if d["workload_id"] == workload_id]
            self._flush_workload(workload_id, documents)
        return self._written - written_before

    def _flush_workload(self, workload_id: str, documents: list[dict[str, Any]]) -> None:
        folder = self.directory / workload_id
        folder.mkdir(parents=True, exist_ok=True)
        index = self._index(workload_id)
        with _exclusive_lock(folder / LOCK_FILE):
            self._catch_up(workload_id, index, holding_lock=True)
            plan, already_on_disk = self._plan(index, documents)
            self._forget_pending(already_on_disk)
            for name, (lines, ids) in plan.items():
                # A failed write raises here; what is not yet written stays pending for a retry.
                index.read_up_to[name] = _append_whole_lines(folder / name, b"".join(lines))
                index.ids.update(ids)
                self._written += len(ids)
                self._forget_pending(ids)

    def _forget_pending(self, ids: list[str]) -> None:
        if ids:
            done = set(ids)
            self._pending = [d for d in self._pending if d["response"]["id"] not in done]
            self._pending_ids -= done

    def _plan(
        self, index: _WorkloadIndex, documents: list[dict[str, Any]]
    ) -> tuple[dict[str, tuple[list[bytes], list[str]]], list[str]]:
        """Which new lines go to which file (day, then size rotation), and the ids already on disk."""
        plan: dict[str, tuple[list[bytes], list[str]]] = {}
        already_on_disk: list[str] = []
        current: dict[str, tuple[int, int]] = {}  # day -> (part, size including planned lines)
        seen: set[str] = set()
        for document in documents:
            rid = document["response"]["id"]
            if rid in index.ids or rid in seen:  # another process wrote it meanwhile
                self._duplicates += 1
                already_on_disk.append(rid)
                continue
            seen.add(rid)
            line = (canonical_json(document) + "\n").encode("utf-8")
            day = record_day(document)
            part, size = current.get(day) or index.last_part(day)
            if size > 0 and size + len(line) > self.max_bytes:
                part, size = part + 1, 0
            current[day] = (part, size + len(line))
            lines, ids = plan.setdefault(day_file_name(day, part), ([], []))
            lines.append(line)
            ids.append(rid)
        return plan, already_on_disk


def sorted_day_files(folder: Path) -> list[Path]:
    """Day files of one workload folder, ordered by (day, part)."""
    found = []
    for path in folder.iterdir():
        match = DAY_FILE_RE.match(path.name)
        if match:
            found.append(((match["day"], int(match["part"] or 0)), path))
    return [path for _, path in sorted(found)]


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _append_whole_lines(path: Path, data: bytes) -> int:
    """Append ``data`` with one write and fsync; on failure cut the file back. Returns the size."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:  # one write in practice; loop only for a short write
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, start)
        raise
    finally:
        os.close(fd)
    if created:
        _fsync_directory(path.parent)
    return start + len(data)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
