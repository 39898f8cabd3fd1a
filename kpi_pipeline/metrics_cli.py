"""`kpi-pipeline metrics serve | compact`: the Prometheus endpoint over the metrics directory.

``serve`` answers ``/metrics`` (every value recorded by any process, alive or finished, see
``kpi_pipeline.metrics``) and ``/healthz``, and compacts dead processes' files in the
background. The directory comes from ``KPI_METRICS_DIR`` (default ``KPI_DATA_DIR/metrics``).

``/metrics`` also carries the write-back outbox's state, read from the ledger on each scrape
(``OutboxCollector``): it is a state of the ledger, not something a process records, so it
is right even when no run has touched the outbox for hours.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric

from kpi_pipeline import metrics
from kpi_pipeline.config import get_settings

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
# Processes with files on disk (alive or finished, ~3 files each) above which a scrape
# compacts before reading: each file costs every scrape ~0.1 ms of merging.
CROWDED_PROCESSES = 8


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper does not block the others."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops connections under concurrent scrapes, and a
    # dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the log; errors still reach stderr."""


def _health(metrics_dir: Path) -> tuple[str, dict[str, object]]:
    """Healthy when the metrics directory can be read and a scrape can be built."""
    try:
        files = len(list(metrics_dir.glob("*.db")))
        list(metrics.MetricsDirCollector(metrics_dir).collect())
    except Exception as exc:
        return "503 Service Unavailable", {
            "status": "error",
            "metrics_dir": str(metrics_dir),
            "error": str(exc),
        }
    return "200 OK", {"status": "ok", "metrics_dir": str(metrics_dir), "metric_files": files}


def _compact_if_crowded(metrics_dir: Path) -> None:
    """A burst of runs (a backfill) can leave hundreds of files before the next periodic
    compaction; every scrape reads them all, so compact first when there are many."""
    if sum(1 for _ in metrics_dir.glob(f"*{metrics.ALIVE_SUFFIX}")) > CROWDED_PROCESSES:
        metrics.compact(metrics_dir)


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
        (``kpi_pipeline.live_health``: the same reading as the live_path_health check)."""
        from kpi_pipeline.live_health import processing_health

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


def _settings_ledger() -> Any:
    from kpi_pipeline import wiring

    return wiring.ledger(get_settings())


def build_app(metrics_dir: Path, open_ledger: Callable[[], Any] | None = None) -> WSGIApp:
    """WSGI app: /metrics (Prometheus text or OpenMetrics), /healthz (JSON), else 404.

    ``open_ledger`` builds the ledger whose outbox /metrics reports (called on the first
    scrape); None leaves the outbox series out.
    """
    registry = CollectorRegistry(auto_describe=False)
    if open_ledger is not None:
        # Collected first, so an error reading the ledger is counted in this same scrape.
        registry.register(OutboxCollector(open_ledger))
    registry.register(metrics.MetricsDirCollector(metrics_dir))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/metrics", "/metrics/"):
            _compact_if_crowded(metrics_dir)
            return metrics_app(environ, start_response)
        if path == "/healthz":
            status, body = _health(metrics_dir)
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found: use /metrics or /healthz\n"]

    return app


def _compact_periodically(
    metrics_dir: Path, interval_seconds: float, stop: threading.Event
) -> None:
    while not stop.wait(interval_seconds):
        try:
            metrics.compact(metrics_dir)
        except Exception as exc:
            metrics.record_error("metrics")
            print(f"metrics compaction failed: {exc}", file=sys.stderr, flush=True)


def serve(host: str, port: int, compact_interval_seconds: float = 10.0) -> None:
    """Serve until interrupted. Prints the bound address (port 0 picks a free one)."""
    metrics_dir = metrics.configure()
    metrics.initialise_known_series(get_settings().cdc_channels)
    metrics.compact(metrics_dir)
    server = make_server(
        host,
        port,
        build_app(metrics_dir, _settings_ledger),
        _ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    stop = threading.Event()
    compactor = threading.Thread(
        target=_compact_periodically,
        args=(metrics_dir, compact_interval_seconds, stop),
        daemon=True,
    )
    compactor.start()
    bound_host, bound_port = server.server_address[:2]
    print(
        f"serving metrics on http://{bound_host}:{bound_port}/metrics from {metrics_dir}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()


def _serve_command(args: argparse.Namespace) -> int:
    try:
        serve(args.host, args.port, args.compact_interval)
    except OSError as exc:
        print(
            f"cannot serve metrics on {args.host}:{args.port}: {exc}; pick another --port.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _compact_command(args: argparse.Namespace) -> int:
    directory = metrics.configure()
    result = metrics.compact(directory)
    print(
        f"absorbed {result.files_absorbed} files of {result.dead_processes} finished processes "
        f"into archive generation {result.generation} in {directory}"
    )
    return 0


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 10")
    return seconds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("metrics", help="Prometheus metrics endpoint")
    commands = parser.add_subparsers(dest="metrics_command", required=True, metavar="SUBCOMMAND")
    serve_parser = commands.add_parser(
        "serve", help="serve /metrics and /healthz over the metrics directory (KPI_METRICS_DIR)"
    )
    serve_parser.add_argument(
        "--port", type=int, default=get_settings().metrics_port, help="TCP port (0: any free port)"
    )
    serve_parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)"
    )
    serve_parser.add_argument(
        "--compact-interval",
        type=_positive_seconds,
        default=10.0,
        help="seconds between compactions of finished processes' metric files (each scrape reads "
        "every file, so frequent compaction keeps scrapes fast; an idle compaction costs under 1 ms)",
    )
    serve_parser.set_defaults(func=_serve_command)
    compact_parser = commands.add_parser(
        "compact", help="fold finished processes' metric files into the archive"
    )
    compact_parser.set_defaults(func=_compact_command)


def main(argv: list[str] | None = None) -> int:
    """`python -m kpi_pipeline.metrics_cli serve|compact ...`: the same commands as
    `kpi-pipeline metrics ...` without importing every other area (0.2 s start instead of 1 s),
    for process supervisors and tests that start the endpoint often."""
    parser = argparse.ArgumentParser(prog="python -m kpi_pipeline.metrics_cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["metrics", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
