"""Re-sync throughput (issue 12): one ``replay_id_invalid`` window over a whole simulated org,
re-read over HTTPS from the sandbox org's own process and applied to a SQLite or PostgreSQL
ledger, with the objects the ``cdc_resync`` job's step uses (``wiring``).

A ``replay_id_invalid`` window is what an outage longer than the org's event retention
(72 hours) leaves: the stored replay id is refused, and every Lead, Task and EmailMessage
modified since the window started is re-read over REST, its ``LeadHistory`` owner changes
too, turned into change events and applied by ``BatchProcessor.process``; the routing and
first-response fields it produced are written back to the org.

1. simulate ``--leads`` leads (and their activity) into a sandbox store, once (``--keep``
   keeps it for the next run);
2. start the sandbox org's serve process over that store (``ensure_sandbox``: HTTPS, no live
   simulation), with a new ledger (``--ledger sqlite|postgres``);
3. open one ``replay_id_invalid`` window on ``/data/ChangeEvents`` from before the first lead;
4. time ``resync_open_windows`` (the job's step), then one write-back drain (its last op).

Reports records and events per second of the re-sync and with the write-back, the REST
requests and their seconds (GET: the re-sync's reads; PATCH: the write-back), the seconds in
``process``, the cyclic garbage collector's collections and seconds per generation, the peak
RSS of this process, and the load average.

    python bench/bench_resync.py --leads 10000 --ledger sqlite --keep /tmp/rs10k
    python bench/bench_resync.py --store /tmp/rs10k/sandbox.db --ledger postgres
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_live as live  # the scratch PostgreSQL databases' admin connection

START_MS = 1_790_000_000_000  # fixed, so the simulated org is the same on every run
LEADS_PER_DAY = 400  # the sandbox default arrival rate


def simulated_store(path: Path, leads: int, seed: int) -> float:
    from kpi_pipeline.sandbox.simulator import simulate
    from kpi_pipeline.sandbox.store import SandboxStore

    days = max(1.0, leads / LEADS_PER_DAY)
    end_ms = START_MS + int(days * 86_400_000)
    started = time.perf_counter()
    store = SandboxStore(path, clock=lambda: end_ms, retention_ms=10**13)
    simulate(store, leads=leads, days=days, seed=seed, start_ms=START_MS)
    store.close()
    return time.perf_counter() - started


class Timed:
    """Delegates to ``target``; calls of the named methods add their seconds and count."""

    def __init__(self, target: Any, methods: tuple[str, ...]) -> None:
        self._target, self._methods = target, methods
        self.seconds, self.calls = 0.0, 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._methods:
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


class CollectorTimes:
    """How many collections of each generation CPython's cyclic collector ran, and their
    seconds (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.counts[info["generation"]] += 1
        self.seconds[info["generation"]] += time.perf_counter() - self._started

    def summary(self) -> dict[str, Any]:
        return {"collections": self.counts, "s": [round(v, 2) for v in self.seconds]}


class HttpTimes:
    """Count and seconds of the requests a ``requests.Session`` sends, by HTTP method: GET
    for the re-sync's reads, PATCH for the write-back's sObject Collections."""

    def __init__(self, session: Any) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        original = session.request

        def request(method: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(method, *args, **kwargs)
            finally:
                self.calls[method] = self.calls.get(method, 0) + 1
                self.seconds[method] = self.seconds.get(method, 0.0) + time.perf_counter() - started

        session.request = request


def ledger_url(kind: str, scratch: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{scratch / 'ledger.db'}", None
    name = f"bench_resync_{uuid.uuid4().hex[:8]}"
    live.pg_admin(f"CREATE DATABASE {name}")
    return f"{live.PG_URL}/{name}", name


def run(store: Path, kind: str, scratch: Path) -> dict[str, Any]:
    data_dir = scratch / "data"
    data_dir.mkdir()
    shutil.copyfile(store, data_dir / "sandbox.db")  # the serve process keeps a non-empty store
    url, pg_database = ledger_url(kind, scratch)
    os.environ.update({"KPI_DATA_DIR": str(data_dir), "KPI_LEDGER_URL": url})
    os.environ.setdefault("KPI_SANDBOX_IDLE_EXIT_SECONDS", "120")

    from kpi_pipeline import wiring
    from kpi_pipeline.adapters.ledger.resync_windows import LedgerResyncWindows
    from kpi_pipeline.app.resync import resync_open_windows
    from kpi_pipeline.config import get_settings
    from kpi_pipeline.core.resync_windows import ResyncGap
    from kpi_pipeline.sandbox.runtime import ensure_sandbox, shutdown_sandbox

    settings = get_settings()
    try:
        ensure_sandbox(data_dir, settings=settings, live=False)
        ledger = wiring.ledger(settings)
        ledger.record_resync_window(
            ResyncGap(
                channel="/data/ChangeEvents",
                reason="replay_id_invalid",
                from_replay=b"\x00" * 8,
                from_time_ms=START_MS - 1,
                to_time_ms=None,
                detail={"bench": "bench_resync.py"},
            )
        )
        rest = wiring.salesforce_rest(settings)
        http = HttpTimes(rest._http._session)
        processor = Timed(wiring.batch_processor(settings), ("process",))
        load_before = os.getloadavg()
        collector = CollectorTimes()
        started = time.perf_counter()
        reports = resync_open_windows(
            LedgerResyncWindows(ledger), rest, processor, now=datetime.now(UTC)
        )
        resync_s = time.perf_counter() - started
        drain = wiring.drain_writeback(settings)  # the job's last op, after the windows
        total_s = time.perf_counter() - started
        load_after = os.getloadavg()
    finally:
        shutdown_sandbox(data_dir)
        wiring.reset_cache()
        if pg_database is not None:
            live.pg_admin(f"DROP DATABASE IF EXISTS {pg_database} WITH (FORCE)")
    (report,) = reports
    if report.status != "closed":
        raise SystemExit(f"the window did not close: {report.to_json()}")
    return {
        "ledger": kind,
        "records_read": report.records_read,
        "events_applied": report.events_applied,
        "routed": report.routed,
        "first_responses": report.first_responses,
        "resync_s": round(resync_s, 2),
        "records_per_s": round(report.records_read / resync_s),
        "events_per_s": round(report.events_applied / resync_s),
        "rest_reads": {
            "requests": http.calls.get("GET", 0),
            "s": round(http.seconds.get("GET", 0), 2),
        },
        "rest_writes": {
            "requests": http.calls.get("PATCH", 0),
            "s": round(http.seconds.get("PATCH", 0), 2),
        },
        "processing_s": round(processor.seconds, 2),
        "process_calls": processor.calls,
        "write_back": drain.summary(),
        "writeback_s": round(total_s - resync_s, 2),
        "with_writeback_s": round(total_s, 2),
        "events_per_s_with_writeback": round(report.events_applied / total_s),
        "cyclic_gc_by_generation": collector.summary(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--ledger", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--store", type=Path, default=None, help="a sandbox store to re-sync")
    parser.add_argument("--keep", type=Path, default=None, help="keep the simulated store here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-resync-") as scratch_dir:
        scratch = Path(scratch_dir)
        simulate_s = 0.0
        store = args.store
        if store is None:
            root = args.keep or scratch
            root.mkdir(parents=True, exist_ok=True)
            store = root / "sandbox.db"
            simulate_s = simulated_store(store, args.leads, args.seed)
        figures = run(store, args.ledger, scratch)
    figures["simulate_s"] = round(simulate_s, 2)
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
