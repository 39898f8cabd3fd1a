"""`kpi-pipeline web serve`: the operator's HTTP surface, a FastAPI app served by uvicorn.

* ``/metrics``: Prometheus text (or OpenMetrics, by ``Accept``) of every value any process
  recorded into the metrics directory, plus the ledger's outbox and live-path gauges read at
  scrape time (``kpi_pipeline.telemetry.exposition.build_registry``). Concurrent requests share the
  scrape in flight (p95 20-26 ms for 20 scrapers at once, bench/RESULTS.md).
* ``/healthz`` (liveness): this process is up and can read its stores (the metrics
  directory and the ledger); 503 with the error otherwise.
* ``/readyz`` (readiness): 200 ``{"ready": true, "reasons": []}``, or 503 with every reason
  the deployment is not ready (``kpi_pipeline.app.operator_status``: org unreachable or refusing
  authentication, no live stream or no progress, processing lag, stuck batches, recent dead
  letters, outbox backlog), each with its threshold.
* ``/status``: the JSON snapshot behind that answer: per channel replay id, ingest and
  processing lag, pending batches; dead letters by reason; outbox by state; open re-sync
  windows; the policy version in force; the newest KPI partition written; the org probe.

The org is probed (a token and a one-row query) at most every ``KPI_READY_ORG_PROBE_SECONDS``;
everything else is read from the ledger on each request. Endpoints are plain ``def``
functions: FastAPI runs them in its thread pool, so a slow ledger read never blocks the
event loop and concurrent scrapes proceed in parallel. (No ``from __future__ import
annotations`` here: FastAPI reads the endpoints' parameter types at definition time.)
"""

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kpi_pipeline.config import Settings, get_settings

OrgProbeFn = Callable[[Settings], Any]


class _CachedProbe:
    """The org's last answer, renewed when older than ``ttl_s`` (one probe at a time)."""

    def __init__(self, probe: OrgProbeFn, settings: Settings, ttl_s: float) -> None:
        self._probe, self._settings, self._ttl_s = probe, settings, ttl_s
        self._lock = threading.Lock()
        self._last: Any = None
        self._at = float("-inf")

    def __call__(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl_s:
                self._last = self._probe(self._settings)
                self._at = time.monotonic()
            return self._last


class _SharedScrape:
    """Concurrent /metrics requests share the scrape in flight instead of each merging every
    metric file and reading the ledger again: 20 scrapers at once then cost about one
    scrape, not twenty queued on the CPU. A request never gets a result that was finished
    before it arrived; at most one that was started a few milliseconds earlier."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future] = {}

    def get(self, key: str, produce: Callable[[], bytes]) -> bytes:
        with self._lock:
            future = self._in_flight.get(key)
            leader = future is None
            if leader:
                future = self._in_flight[key] = Future()
        if leader:
            try:
                future.set_result(produce())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    del self._in_flight[key]
        return future.result()


def build_app(
    settings: Settings,
    *,
    metrics_dir: Path,
    open_ledger: Callable[[], Any],
    probe_org: OrgProbeFn | None,
) -> Any:
    """The FastAPI app. ``probe_org`` None leaves the org out of readiness (tests of the
    ledger-side reasons, or a deployment that watches the org elsewhere)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client.exposition import choose_encoder

    from kpi_pipeline.app.operator_status import Thresholds, gather_status, status_and_readiness
    from kpi_pipeline.telemetry import exposition, metrics

    registry = exposition.build_registry(metrics_dir, open_ledger)
    org = _CachedProbe(probe_org, settings, settings.ready_org_probe_seconds) if probe_org else None
    thresholds = Thresholds.from_settings(settings)
    app = FastAPI(title="kpi_pipeline", docs_url=None, redoc_url=None, openapi_url=None)

    def snapshot() -> tuple[dict[str, Any], Any]:
        status = gather_status(
            open_ledger(), settings, now=datetime.now(UTC), org=org() if org else None
        )
        return status_and_readiness(status, thresholds)

    shared = _SharedScrape()

    @app.get("/metrics")
    def scrape(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))

        def produce() -> bytes:
            exposition.compact_if_crowded(metrics_dir)
            return encoder(registry)

        return Response(shared.get(content_type, produce), media_type=content_type)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        code, body = exposition.directory_health(metrics_dir)
        try:
            open_ledger().replay_positions()
            body["ledger"] = "ok"
        except Exception as exc:
            code, body = 503, {**body, "status": "error", "ledger": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=code)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        try:
            _, readiness = snapshot()
        except Exception as exc:  # the ledger itself cannot be read: not ready, and why
            metrics.record_error("metrics")
            reason = {"code": "ledger_unreadable", "message": f"{type(exc).__name__}: {exc}"}
            return JSONResponse({"ready": False, "reasons": [reason]}, status_code=503)
        return JSONResponse(readiness.to_dict(), status_code=200 if readiness.ready else 503)

    @app.get("/status")
    def status() -> JSONResponse:
        body, _ = snapshot()
        return JSONResponse(body)

    @app.exception_handler(404)
    def not_found(_request: Request, _exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(
            "Not found: use /metrics, /healthz, /readyz or /status\n", status_code=404
        )

    return app


def serve(host: str, port: int, compact_interval_seconds: float = 10.0) -> None:
    """Serve until interrupted; prints the bound address first (port 0 picks a free one)."""
    import uvicorn

    from kpi_pipeline import wiring
    from kpi_pipeline.telemetry import exposition, logs, metrics, metrics_store

    settings = get_settings()
    logs.configure(settings)
    metrics_dir = metrics.configure(settings)
    metrics.initialise_known_series(settings.cdc_channels)
    metrics_store.compact(metrics_dir)
    app = build_app(
        settings,
        metrics_dir=metrics_dir,
        open_ledger=lambda: wiring.ledger(settings),
        probe_org=wiring.probe_org,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # a burst of concurrent scrapes must not see dropped SYNs
    stop = threading.Event()
    threading.Thread(
        target=exposition.compact_periodically,
        args=(metrics_dir, compact_interval_seconds, stop),
        daemon=True,
    ).start()
    bound_host, bound_port = sock.getsockname()[:2]
    print(
        f"serving metrics on http://{bound_host}:{bound_port}/metrics from {metrics_dir} "
        "(also /healthz, /readyz, /status)",
        flush=True,
    )
    # log_config None: uvicorn's loggers go through the root handler (kpi_pipeline.telemetry.logs).
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", log_config=None
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
