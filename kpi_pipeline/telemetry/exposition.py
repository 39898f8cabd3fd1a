"""What ``/metrics`` is made of, and the upkeep of the metrics directory.

``build_registry`` merges every value recorded by any process, alive or finished, into the
metrics directory (see ``kpi_pipeline.telemetry.metrics``) with the ledger's gauges below;
``kpi_pipeline.web.server`` serves it. The directory comes from ``KPI_METRICS_DIR`` (default
``KPI_DATA_DIR/metrics``).

``/metrics`` also carries the write-back outbox's state, read from the ledger on each scrape
(``OutboxCollector``): it is a state of the ledger, not something a process records, so it
is right even when no run has touched the outbox for hours.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from kpi_pipeline.config import get_settings
from kpi_pipeline.telemetry import metrics, metrics_store

# Processes with files on disk (alive or finished, ~3 files each) above which a scrape
# compacts before reading: each file costs every scrape ~0.1 ms of merging.
CROWDED_PROCESSES = 8


def directory_health(metrics_dir: Path) -> tuple[int, dict[str, object]]:
    """(HTTP status, body): 200 when the metrics directory can be read and merged."""
    try:
        files = len(list(metrics_dir.glob("*.db")))
        list(metrics_store.MetricsDirCollector(metrics_dir).collect())
    except Exception as exc:
        return 503, {"status": "error", "metrics_dir": str(metrics_dir), "error": str(exc)}
    return 200, {"status": "ok", "metrics_dir": str(metrics_dir), "metric_files": files}


def compact_if_crowded(metrics_dir: Path) -> None:
    """A burst of runs (a backfill) can leave hundreds of files before the next periodic
    compaction; every scrape reads them all, so compact first when there are many."""
    if sum(1 for _ in metrics_dir.glob(f"*{metrics.ALIVE_SUFFIX}")) > CROWDED_PROCESSES:
        metrics_store.compact(metrics_dir)


class OutboxCollector:
    """The outbox's rows by status, oldest waiting and held ages and expired claims, read from
    the ledger at scrape time (``Ledger.outbox_health``: a handful of indexed aggregates),
    and the live path's pending batches and stream leases (two more small reads).

    The ledger is opened on the first scrape, not when the server starts, so the endpoint is
    up (and serves the recorded metrics) even while the ledger is not. A scrape that cannot
    read the ledger counts ``errors_total{area="metrics"}`` and leaves these series out, so
    the rest of the scrape still succeeds and the gap is visible (``absent(...)`` alerts).
    """

    STATUSES = ("pending", "claimed", "sent", "failed")

    def __init__(self, open_ledger: Callable[[], Any]) -> None:
        self._open_ledger = open_ledger
        self._ledger: Any = None
        self._last_error = ""

    def _health(self) -> Any:
        if self._ledger is None:
            self._ledger = self._open_ledger()
        return self._ledger.outbox_health()

    def collect(self) -> Iterator[Metric]:
        try:
            health = self._health()
        except Exception as exc:
            metrics.record_error("metrics")
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:  # once per distinct error, not once per scrape
                print(f"outbox metrics: cannot read the ledger: {message}", file=sys.stderr)
                self._last_error = message
            return
        self._last_error = ""
        rows = GaugeMetricFamily(
            "writeback_outbox_rows", "Write-back outbox rows by status", labels=["status"]
        )
        for status in self.STATUSES:
            rows.add_metric([status], health.by_status.get(status, 0))
        yield rows
        # 0 when nothing waits: "how long has the oldest row waited" is then nothing at all.
        yield GaugeMetricFamily(
            "writeback_oldest_pending_age_seconds",
            "Seconds the oldest pending outbox row has waited to be sent (0: none pending)",
            value=health.oldest_pending_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "writeback_oldest_claimed_age_seconds",
            "Seconds the oldest claimed outbox row has been held by a drain (0: none claimed)",
            value=health.oldest_claimed_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "writeback_expired_claims",
            "Claimed outbox rows whose lease ran out (their drainer died), not yet retaken",
            value=health.expired_claims,
        )
        yield from self._live_path()

    def _live_path(self) -> Iterator[Metric]:
        """Pending batches per channel and, in stream mode, whether a stream run holds it
        (``kpi_pipeline.core.live_health``: the same reading as the live_path_health check)."""
        from kpi_pipeline.core.live_health import processing_health

        settings = get_settings()
        try:
            health = processing_health(
                self._ledger, settings.cdc_channels, mode=settings.cdc_mode, now=datetime.now(UTC)
            )
        except Exception as exc:  # like the outbox series: leave these out, count the error
            metrics.record_error("metrics")
            print(f"live-path metrics: cannot read the ledger: {exc}", file=sys.stderr)
            return
        pending = GaugeMetricFamily(
            "cdc_pending_batches", "Staged batches not processed yet", labels=["channel"]
        )
        oldest = GaugeMetricFamily(
            "cdc_oldest_pending_batch_age_seconds",
            "Seconds the oldest unprocessed batch has waited (0: none pending)",
            labels=["channel"],
        )
        alive = GaugeMetricFamily(
            "cdc_stream_alive",
            "1 while a cdc_stream run holds the channel (stream mode; absent in sensor mode)",
            labels=["channel"],
        )
        for channel in health.channels:
            pending.add_metric([channel.channel], channel.pending_batches)
            oldest.add_metric([channel.channel], channel.oldest_pending_age_s or 0.0)
            if channel.stream_alive is not None:
                alive.add_metric([channel.channel], 1.0 if channel.stream_alive else 0.0)
        yield pending
        yield oldest
        yield alive


def build_registry(
    metrics_dir: Path, open_ledger: Callable[[], Any] | None = None
) -> CollectorRegistry:
    """What /metrics exposes. ``open_ledger`` builds the ledger whose outbox and live path
    it reports (called on the first scrape); None leaves those series out."""
    registry = CollectorRegistry(auto_describe=False)
    if open_ledger is not None:
        # Collected first, so an error reading the ledger is counted in this same scrape.
        registry.register(OutboxCollector(open_ledger))
    registry.register(metrics_store.MetricsDirCollector(metrics_dir))
    return registry


def push_to_gateway(url: str, metrics_dir: Path | None = None) -> None:
    """Replace this host's group on a Pushgateway with the host's metric totals (every
    process's values in the metrics directory, as /metrics would show them). Replacing is
    right because the totals are cumulative: a group per run would grow without end."""
    import socket

    from prometheus_client import push_to_gateway as push

    directory = metrics_dir if metrics_dir is not None else metrics.metrics_dir()
    push(
        url,
        job="kpi_pipeline",
        registry=build_registry(directory),
        grouping_key={"instance": socket.gethostname()},
        timeout=10,
    )


def compact_periodically(metrics_dir: Path, interval_seconds: float, stop: threading.Event) -> None:
    while not stop.wait(interval_seconds):
        try:
            metrics_store.compact(metrics_dir)
        except Exception as exc:
            metrics.record_error("metrics")
            print(f"metrics compaction failed: {exc}", file=sys.stderr, flush=True)
