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

The directory's upkeep (identities, compaction, manifest) is in
``kpi_pipeline.telemetry.metrics_store``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client import Counter, Gauge, Histogram, values

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
    it on every write to detect forks). Holding the flock marks the files as in use.

    A fork is noticed by ``_forget_parent_identity`` (an ``os.register_at_fork`` hook), not
    by asking the pid on every write: ``getpid`` is a system call, and a replay records
    about a million values (2 % of its time)."""
    if _identity.pid != -1:
        return _identity.name
    pid = os.getpid()
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


def _forget_parent_identity() -> None:
    """In a forked child: its metric files get a name of their own on the next write."""
    _identity.pid = -1


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
        os.register_at_fork(after_in_child=_forget_parent_identity)
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
