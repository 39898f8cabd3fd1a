"""The metrics directory of prometheus_client's multiprocess mode, as this project keeps it:
what a scrape reads, and how finished processes' files are folded into an archive.

Process identity and compaction
-------------------------------
Stock multiprocess mode names files by PID. With recycled PIDs (containers restart at PID
1, hosts wrap around) a new process would append to a dead one's file, and two PID
namespaces sharing the directory would write the same file at once. Here each process
gets a unique identity (``<pid>-<random>``) and holds an exclusive ``flock`` on
``<identity>.alive`` for its lifetime; the kernel releases it when the process dies, even
on SIGKILL. ``compact()`` (run by ``metrics serve`` periodically) folds the files of dead
processes into one archive generation and deletes them, so the number of files stays
bounded however many runs there were. A manifest (written atomically) names the current
archive generation and the files it absorbed; scrapes ignore absorbed files, so a crash at
any step neither loses nor double-counts values. Scrapes take a shared lock on the
directory, compaction an exclusive one. Requires a local filesystem with ``flock`` (Linux,
macOS; not NFS).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from kpi_pipeline.telemetry.metrics import (
    ALIVE_SUFFIX,
    ARCHIVE_PREFIX,
    DIR_LOCK_NAME,
    MANIFEST_NAME,
    current,
    metrics_dir,
)


# --- the directory: scrape side ---------------------------------------------------------
@contextmanager
def _directory_lock(path: Path, exclusive: bool) -> Iterator[None]:
    with open(path / DIR_LOCK_NAME, "ab") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@dataclass(frozen=True)
class _Manifest:
    generation: int = 0
    absorbed: frozenset[str] = frozenset()


def _read_manifest(path: Path) -> _Manifest:
    try:
        raw = json.loads((path / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return _Manifest()
    return _Manifest(int(raw["generation"]), frozenset(raw["absorbed"]))


def _write_manifest(path: Path, manifest: _Manifest) -> None:
    """Atomic replace: the manifest is the commit point of a compaction."""
    tmp = path / f"{MANIFEST_NAME}.tmp"
    with open(tmp, "w") as handle:
        json.dump(
            {"generation": manifest.generation, "absorbed": sorted(manifest.absorbed)}, handle
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path / MANIFEST_NAME)


def _owner(file_name: str) -> str:
    """Identity in a metric file name: counter_<id>.db, gauge_<mode>_<id>.db ("" if foreign:
    such files are scraped as they are and never absorbed)."""
    parts = file_name[: -len(".db")].split("_")
    index = 2 if parts[0] == "gauge" else 1
    return parts[index] if len(parts) == index + 1 else ""


def _visible_files(path: Path, manifest: _Manifest) -> list[Path]:
    current_archive = f"{ARCHIVE_PREFIX}{manifest.generation}"
    visible = []
    for file in sorted(path.glob("*.db")):
        owner = _owner(file.name)
        if file.name in manifest.absorbed:
            continue
        if owner.startswith(ARCHIVE_PREFIX) and owner != current_archive:
            continue  # a half-written or superseded archive generation
        visible.append(file)
    return visible


def _empty_family(metric: Counter | Gauge | Histogram) -> Metric:
    name, doc, labels = metric._name, metric._documentation, list(metric._labelnames)
    if metric._type == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if metric._type == "histogram":
        return HistogramMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


class MetricsDirCollector:
    """Merges every live and archived metric file of a metrics directory on each scrape."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else metrics_dir()
        if not self.path.is_dir():
            raise ValueError(f"Metrics directory {self.path} does not exist; set KPI_METRICS_DIR.")

    def collect(self) -> Iterator[Metric]:
        with _directory_lock(self.path, exclusive=False):
            files = _visible_files(self.path, _read_manifest(self.path))
            families = list(MultiProcessCollector.merge([str(f) for f in files], accumulate=True))
        seen = {family.name for family in families}
        yield from families
        # Every name in the exposition from the start, even one with no label set yet.
        for metric in current().all():
            if metric._name not in seen:
                yield _empty_family(metric)


# --- the directory: compaction ------------------------------------------------------------
@dataclass(frozen=True)
class CompactionResult:
    dead_processes: int
    files_absorbed: int
    generation: int


def _dead_identities(path: Path) -> dict[str, IO[bytes]]:
    """Identities whose owner died (their flock is free), each with the lock now held by us."""
    dead: dict[str, IO[bytes]] = {}
    for alive in path.glob(f"*{ALIVE_SUFFIX}"):
        handle = open(alive, "ab")  # noqa: SIM115 - kept open while we absorb its files
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        dead[alive.name[: -len(ALIVE_SUFFIX)]] = handle
    return dead


def _merge_values(file_kind: str, files: list[Path]) -> dict[str, tuple[float, float]]:
    """key -> (value, timestamp) of one file kind (counter, histogram, gauge_mostrecent, ...)."""
    merged: dict[str, tuple[float, float]] = {}
    for file in files:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(file)):
            if key not in merged:
                merged[key] = (value, timestamp)
                continue
            old_value, old_timestamp = merged[key]
            if file_kind in ("gauge_max", "gauge_min"):
                pick = max if file_kind == "gauge_max" else min
                merged[key] = (pick(old_value, value), 0.0)
            elif file_kind == "gauge_mostrecent":
                merged[key] = (
                    (value, timestamp) if timestamp > old_timestamp else (old_value, old_timestamp)
                )
            else:  # counters, histogram buckets/sum/count, summaries, gauge_sum: values add up
                merged[key] = (old_value + value, 0.0)
    return merged


def _file_kind(file_name: str) -> str:
    parts = file_name.split("_")
    return f"{parts[0]}_{parts[1]}" if parts[0] == "gauge" else parts[0]


def _is_archivable(kind: str) -> bool:
    """live* gauges describe living processes only: a dead process's values are dropped
    (what mark_process_dead does). `all` gauges carry one series per process (a pid label)
    that cannot merge; they are dropped with the process too. Our only gauge is mostrecent."""
    return not (kind.startswith("gauge_live") or kind == "gauge_all")


def _write_archive(path: Path, generation: int, files: list[Path]) -> None:
    by_kind: dict[str, list[Path]] = {}
    for file in files:
        by_kind.setdefault(_file_kind(file.name), []).append(file)
    for kind, kind_files in by_kind.items():
        if not _is_archivable(kind):
            continue
        target = path / f"{kind}_{ARCHIVE_PREFIX}{generation}.db"
        target.unlink(missing_ok=True)  # leftover of a crashed attempt at this generation
        archive = MmapedDict(str(target))
        for key, (value, timestamp) in _merge_values(kind, kind_files).items():
            archive.write_value(key, value, timestamp)
        archive.close()
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())


def _remove_leftovers(path: Path, manifest: _Manifest) -> None:
    """Delete absorbed files and superseded archive generations (safe: scrapes ignore them)."""
    for name in manifest.absorbed:
        (path / name).unlink(missing_ok=True)
    current_archive = f"{ARCHIVE_PREFIX}{manifest.generation}"
    for file in path.glob("*.db"):
        owner = _owner(file.name)
        if owner.startswith(ARCHIVE_PREFIX) and owner != current_archive:
            file.unlink(missing_ok=True)


def compact(path: Path | None = None) -> CompactionResult:
    """Fold the metric files of dead processes into a new archive generation.

    Totals seen by a scrape are the same before and after; idempotent and crash-safe (see the
    module docstring). Live processes' files and this process's own files are left alone.
    """
    path = Path(path) if path is not None else metrics_dir()
    with _directory_lock(path, exclusive=True):
        manifest = _read_manifest(path)
        _remove_leftovers(path, manifest)
        dead = _dead_identities(path)
        try:
            dead_files = [f for f in _visible_files(path, manifest) if _owner(f.name) in dead]
            if dead_files:
                manifest = _absorb(path, manifest, dead_files)
            for identity in dead:
                (path / f"{identity}{ALIVE_SUFFIX}").unlink(missing_ok=True)
        finally:
            for handle in dead.values():
                handle.close()
    return CompactionResult(len(dead), len(dead_files), manifest.generation)


def _absorb(path: Path, manifest: _Manifest, dead_files: list[Path]) -> _Manifest:
    old_archive = [
        f for f in _visible_files(path, manifest) if _owner(f.name).startswith(ARCHIVE_PREFIX)
    ]
    generation = manifest.generation + 1
    _write_archive(path, generation, old_archive + dead_files)
    committed = _Manifest(generation, frozenset(f.name for f in old_archive + dead_files))
    _write_manifest(path, committed)
    _remove_leftovers(path, committed)
    cleaned = _Manifest(generation, frozenset())
    _write_manifest(path, cleaned)
    return cleaned
