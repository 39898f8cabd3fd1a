"""Prometheus metrics (CONTRACTS.md §6). Names come from the plan so its PromQL works unchanged.

Call sites use the small functions below, never the metric objects, so the storage behind
them can change without touching them.

Why a directory of files, not an in-process registry
----------------------------------------------------
Dagster runs are short-lived processes: a counter kept in memory dies with its run. So every
process that imports this module records into prometheus_client *multiprocess mode* files
in one directory (``Settings.resolved_metrics_dir``: ``KPI_METRICS_DIR``, default
``DATA_DIR/metrics``), and ``kpi-pipeline metrics serve`` merges the files on each scrape.
Values therefore survive the recording process, and a restart of the server.

Nothing happens at import. ``configure(settings)`` (called by the CLI entry points, and
otherwise by the first recording call, from the ``KPI_*`` environment) resolves the
directory, creates it, exports ``PROMETHEUS_MULTIPROC_DIR`` (children such as Dagster run
workers inherit it, and prometheus_client's multiprocess values open their files there),
installs the multiprocess value class and only then creates the metric objects. So neither
import order nor an earlier import of prometheus_client by another library matters.

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
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from kpi_pipeline.config import DEFAULT_CHANNELS, Settings, get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _resolve_metrics_dir(settings: Settings) -> Path:
    """The metrics directory from settings (or an inherited PROMETHEUS_MULTIPROC_DIR), created."""
    inherited = os.environ.get(MULTIPROC_ENV)
    configured = settings.resolved_metrics_dir.expanduser().resolve()
    if inherited:
        inherited_path = Path(inherited).expanduser().resolve()
        if settings.metrics_dir is not None and inherited_path != configured:
            raise ValueError(
                f"{MULTIPROC_ENV}={inherited} and KPI_METRICS_DIR={settings.metrics_dir} name "
                "different metrics directories; unset one of them (KPI_METRICS_DIR is preferred)."
            )
        configured = inherited_path
    try:
        configured.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"Cannot create the metrics directory {configured} ({exc}); set KPI_METRICS_DIR "
            "(or KPI_DATA_DIR) to a writable local directory."
        ) from exc
    return configured


ALIVE_SUFFIX = ".alive"
ARCHIVE_PREFIX = "archive-"
MANIFEST_NAME = "manifest.json"
DIR_LOCK_NAME = ".lock"


# --- process identity ---------------------------------------------------------------------
@dataclass
class _Identity:
    pid: int = -1
    name: str = ""
    lock_file: IO[bytes] | None = None


_identity = _Identity()


def _process_identifier() -> str:
    """Unique name of this process's metric files, renewed after fork (prometheus_client calls
    it on every write to detect forks). Holding the flock marks the files as in use."""
    pid = os.getpid()
    if _identity.pid == pid:
        return _identity.name
    if _identity.lock_file is not None:
        # Forked child: drop the parent's descriptor so only the parent keeps its files alive.
        _identity.lock_file.close()
    name = f"{pid}-{secrets.token_hex(4)}"
    # Lock first, then rename into view: compaction never sees an unlocked .alive file.
    directory = metrics_dir()
    pending = directory / f"{name}{ALIVE_SUFFIX}.pending"
    lock_file = open(pending, "ab")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(pending, directory / f"{name}{ALIVE_SUFFIX}")
    _identity.pid, _identity.name, _identity.lock_file = pid, name, lock_file
    return name


# --- the metrics ----------------------------------------------------------------------------
# Minutes to days: leads are answered within minutes at best and after a weekend at worst.
TTFR_BUCKETS = (
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    172800,
    259200,
    604800,
)
# Seconds to minutes: routing runs within a sensor tick or two, slower means a stuck queue.
ASSIGNMENT_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
AUTH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Commit in the org -> the batch holding that change processed (decisions applied in the
# ledger): sub-second in stream mode, tens of seconds with a run per batch.
PROCESSING_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class Metrics:
    """The metric objects of one process, created by ``configure`` once the directory is
    known (none is registered in prometheus_client's global registry: ``metrics serve``
    merges the directory's files instead)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cdc_events = Counter(
            "cdc_events", "CDC events received", ["channel", "change_type"], registry=None
        )
        # mostrecent: lag is a state, and the newest measurement (from whichever run took it)
        # is the truth. `max` would pin the worst lag ever seen, since dead runs' files keep
        # their values; `livemostrecent` would drop the value whenever no run is alive, i.e.
        # between sensor ticks.
        self.cdc_lag = Gauge(
            "cdc_lag_seconds",
            "Seconds between now and the newest commit seen",
            ["channel"],
            multiprocess_mode="mostrecent",
            registry=None,
        )
        self.decisions = Counter(
            "decisions",
            "Workload decisions",
            ["workload", "outcome", "policy_version"],
            registry=None,
        )
        self.first_response_latency = Histogram(
            "first_response_latency_seconds",
            "Lead creation to first response",
            buckets=TTFR_BUCKETS,
            registry=None,
        )
        self.assignment_latency = Histogram(
            "assignment_latency_seconds",
            "Lead creation to first user owner",
            buckets=ASSIGNMENT_BUCKETS,
            registry=None,
        )
        self.errors = Counter("errors", "Errors by area", ["area"], registry=None)
        self.auth_requests = Counter(
            "auth_requests", "Salesforce auth requests", ["result"], registry=None
        )
        self.auth_latency = Histogram(
            "auth_latency_seconds",
            "Salesforce token request latency",
            buckets=AUTH_BUCKETS,
            registry=None,
        )
        self.writeback_sends = Counter(
            "writeback_sends",
            "Outbox rows by the outcome of their send to Salesforce",
            ["outcome"],
            registry=None,
        )
        self.processing_lag = Histogram(
            "cdc_processing_lag_seconds",
            "Commit in the org to its batch processed",
            ["channel"],
            buckets=PROCESSING_LAG_BUCKETS,
            registry=None,
        )
        # A decision applied in the ledger (its outbox row marked dirty) -> Salesforce
        # confirmed the write. Commit -> written back is processing lag followed by this.
        self.writeback_lag = Histogram(
            "writeback_lag_seconds",
            "Outbox row marked dirty (decision applied) to Salesforce confirming the write",
            buckets=PROCESSING_LAG_BUCKETS,
            registry=None,
        )

    def all(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.cdc_events,
            self.processing_lag,
            self.writeback_lag,
            self.cdc_lag,
            self.decisions,
            self.first_response_latency,
            self.assignment_latency,
            self.errors,
            self.auth_requests,
            self.auth_latency,
            self.writeback_sends,
        )


_current: Metrics | None = None
_directory: list[Path] = []  # set by configure before any value file is opened
_configure_lock = threading.Lock()


def configure(settings: Settings | None = None) -> Path:
    """Start recording into the metrics directory of ``settings`` (default: the ``KPI_*``
    environment); returns it. Idempotent; a second call naming another directory is an
    error, since this process's values already live in the first one."""
    global _current
    settings = settings or get_settings()
    with _configure_lock:
        if _current is not None:
            wanted = settings.metrics_dir
            if wanted is not None and wanted.expanduser().resolve() != _current.directory:
                raise ValueError(
                    f"metrics already record into {_current.directory}; cannot switch this "
                    f"process to {wanted} (set KPI_METRICS_DIR once, before the first record)"
                )
            return _current.directory
        directory = _resolve_metrics_dir(settings)
        # Absolute, so Dagster run workers started in another working directory agree.
        os.environ[MULTIPROC_ENV] = str(directory)
        _directory[:] = [directory]
        values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
        _current = Metrics(directory)
        return directory


def current() -> Metrics:
    """This process's metric objects, configuring from the environment on first use."""
    if _current is None:
        configure()
    assert _current is not None
    return _current


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float:
    """This process's own value of one sample (0.0 if never recorded), e.g.
    ``sample_value("errors_total", {"area": "cdc"})``: for tests and diagnostics. A scrape
    merges every process's values instead."""
    wanted = dict(labels or {})
    for metric in current().all():
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
    return 0.0


def metrics_dir() -> Path:
    """The directory this process records into (configuring it on first use)."""
    return _directory[0] if _directory else current().directory


CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE")
AUTH_RESULTS = ("hit", "success", "failure")
# sent: the org confirmed it; retry: left for a later drain (uncertain or transient);
# failed: rejected for good; superseded: dropped because a newer value replaced it.
WRITEBACK_OUTCOMES = ("sent", "retry", "failed", "superseded")
_EPOCH_PLUS_ONE_SECOND = 1.0
# Areas passed to record_error by the pipeline; listed so their series exist (at 0) before
# the first error, which makes `sum(rate(errors_total[5m])) by (area)` answer 0, not nothing.
# A test checks that every literal area at a call site is listed here.
KNOWN_ERROR_AREAS = (
    "cdc_stream",
    "cdc_decode",
    "cdc_bitmap",
    "cdc_diff_reread",
    "cdc_gap",
    "cdc_replay_invalid",
    "processing_apply_records",
    "writeback",
    "salesforce_rest",
    "salesforce_auth",
    "flywheel",
    "sandbox",
    "metrics",
    "outreach_send",
    "cdc_resync",
    "resync_owner_history",
)


def record_cdc_event(channel: str, change_type: str, count: int = 1) -> None:
    current().cdc_events.labels(channel=channel, change_type=change_type).inc(count)


def set_cdc_lag(channel: str, seconds: float) -> None:
    current().cdc_lag.labels(channel=channel).set(seconds)


def record_decision(workload: str, outcome: str, policy_version: str) -> None:
    current().decisions.labels(
        workload=workload, outcome=outcome, policy_version=policy_version
    ).inc()


def observe_first_response(seconds: float) -> None:
    current().first_response_latency.observe(seconds)


def observe_processing_lag(channel: str, seconds: float) -> None:
    current().processing_lag.labels(channel=channel).observe(max(0.0, seconds))


def observe_writeback_lag(seconds: float) -> None:
    current().writeback_lag.observe(max(0.0, seconds))


def observe_assignment(seconds: float) -> None:
    current().assignment_latency.observe(seconds)


def record_error(area: str) -> None:
    current().errors.labels(area=area).inc()


def record_auth(result: str, latency_seconds: float | None = None) -> None:
    """result: 'hit' (cached token), 'success' (fetched), 'failure'."""
    live = current()
    live.auth_requests.labels(result=result).inc()
    if latency_seconds is not None:
        live.auth_latency.observe(latency_seconds)


def record_writeback(outcome: str, count: int = 1) -> None:
    """Outbox rows whose send ended in `outcome` (one of WRITEBACK_OUTCOMES). Never raises:
    it is called from the drain between a send and its bookkeeping."""
    if count:
        current().writeback_sends.labels(outcome=outcome).inc(count)


def initialise_known_series(channels: Iterable[str] = DEFAULT_CHANNELS) -> None:
    """Create the known label sets at 0 so dashboards and rates have series before any event.

    cdc_lag_seconds starts at 0 stamped 1970-01-01T00:00:01 (timestamp 0 means "never set" to
    the `mostrecent` merge), so any real measurement from any process wins over it.
    decisions_total has no known label set (outcomes and policy versions come from the
    policy); the collector still announces its name.
    """
    live = current()
    for channel in channels:
        live.cdc_lag.labels(channel=channel)._value.set(0.0, timestamp=_EPOCH_PLUS_ONE_SECOND)
        for change_type in CHANGE_TYPES:
            live.cdc_events.labels(channel=channel, change_type=change_type)
    for area in KNOWN_ERROR_AREAS:
        live.errors.labels(area=area)
    for result in AUTH_RESULTS:
        live.auth_requests.labels(result=result)
    for outcome in WRITEBACK_OUTCOMES:
        live.writeback_sends.labels(outcome=outcome)


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
