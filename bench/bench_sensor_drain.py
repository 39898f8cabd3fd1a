"""Sensor drain rate: repeated ``drain_tick`` from the sandbox org into a ledger, until caught up.

A ``SandboxStore`` filled by the simulator (≈ 4.5 change events per lead over 2 days, on the
three default channels) is served by ``SandboxRuntime`` (real gRPC on loopback, in this
process, as the embedded sandbox runs inside the Dagster code server). Ticks run
``kpi_pipeline.app.ingest.drain_tick`` exactly as ``cdc_sensor`` does (real ``PubSubClient``,
real ``EventDecoder``, ledger staging) and are repeated, carrying the cursor, until every
channel reports caught up. Ledgers: a fresh SQLite file and a fresh PostgreSQL database
(created on 127.0.0.1:5432 as user postgres, dropped afterwards).

Time is split by wrapping the real objects with timers (they only delegate): fetch (Subscribe
and GetSchema), decode (the tick's summary decodes every event), staging (every ledger call:
the unacknowledged-batch lookup and ``stage_batch``); the rest of the tick (counting, metrics)
is "other". Baseline: the same fetch loop (same per-tick bound, resuming after the last
replay id) with no decoding and no ledger, so the staging overhead reads as a ratio.

    python bench/bench_sensor_drain.py [--leads 5000] [--bound 500 --bound 2000]
                                       [--ledger sqlite --ledger postgres]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Metrics files, the sandbox and the ledgers go to a scratch directory, never ./.kpi_data.
WORKDIR = Path(tempfile.mkdtemp(prefix="bench_sensor_drain_"))
os.environ.setdefault("KPI_DATA_DIR", str(WORKDIR / "kpi"))

import sqlalchemy as sa  # noqa: E402

from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider  # noqa: E402
from kpi_pipeline.adapters.ledger.store import Ledger  # noqa: E402
from kpi_pipeline.adapters.pubsub.client import PubSubClient  # noqa: E402
from kpi_pipeline.adapters.pubsub.decode import EventDecoder  # noqa: E402
from kpi_pipeline.app.ingest import DrainLimits, drain_tick  # noqa: E402
from kpi_pipeline.config import DEFAULT_CHANNELS  # noqa: E402
from kpi_pipeline.core.cursor import SensorCursor  # noqa: E402
from kpi_pipeline.core.errors import ReplayIdInvalidError  # noqa: E402
from kpi_pipeline.sandbox.runtime import SandboxRuntime  # noqa: E402
from kpi_pipeline.sandbox.simulator import simulate  # noqa: E402
from kpi_pipeline.sandbox.store import SandboxStore  # noqa: E402

TOKEN, TENANT = "bench-token", "00D000000000001AAA"
PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
FETCH_SECONDS = 60.0  # per channel and tick; never the limit here (a tick ends on the bound)


@dataclass
class Timers:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


class TimedFetcher:
    """The real client; only adds up the time spent in it."""

    def __init__(self, client: PubSubClient, timers: Timers) -> None:
        self.client, self.timers = client, timers

    def fetch(self, channel: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = self.client.fetch(channel, **kwargs)
        self.timers.seconds[fetch_part(result, kwargs["max_events"])] += (
            time.perf_counter() - started
        )
        return result

    def get_schema(self, schema_id: str) -> str:
        with self.timers.part("fetch"):
            return self.client.get_schema(schema_id)


class TimedLedger:
    """The real ledger; every call drain_tick makes is timed as staging."""

    def __init__(self, ledger: Ledger, timers: Timers) -> None:
        self.ledger, self.timers = ledger, timers

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.ledger, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timers.part("staging"):
                return method(*args, **kwargs)

        return timed


def fetch_part(result: Any, bound: int) -> str:
    """A fetch that stops short of the bound ends by waiting out the client's idle return
    (1 s with no new event, or the server's keepalive after 1 s): counted apart."""
    return "fetch" if len(result.events) >= bound else "tail"


def timed_decode(decode: Callable[[Any], Any], timers: Timers) -> Callable[[Any], Any]:
    def run(raw: Any) -> Any:
        with timers.part("decode"):
            return decode(raw)

    return run


@dataclass
class DrainResult:
    label: str
    bound: int
    events: int
    ticks: int
    seconds: float
    parts: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def busy_rate(self) -> float:
        """Events/s without the caught-up tail (the idle wait that ends every drain)."""
        return self.events / (self.seconds - self.parts.get("tail", 0.0))


def fill_store(path: Path, leads: int, seed: int) -> int:
    store = SandboxStore(path)
    try:
        simulate(store, leads=leads, days=2.0, seed=seed)
        return store.latest_replay()
    finally:
        store.close()


def drain_with_ticks(target: str, ledger: Ledger, bound: int, label: str) -> DrainResult:
    """Ticks until caught up, as cdc_sensor runs them (fresh client: schemas not yet cached)."""
    timers = Timers()
    cursor, events, ticks = SensorCursor(), 0, 0
    with PubSubClient(
        target, StaticTokenProvider(TOKEN, "http://sandbox", TENANT), tls=False
    ) as client:
        fetcher, staged = TimedFetcher(client, timers), TimedLedger(ledger, timers)
        decode = timed_decode(EventDecoder(client.get_schema).decode, timers)
        limits = DrainLimits(max_events=bound, max_seconds=FETCH_SECONDS)
        started = time.perf_counter()
        while True:
            outcome = drain_tick(
                channels=DEFAULT_CHANNELS,
                cursor=cursor,
                fetcher=fetcher,
                ledger=staged,
                decode=decode,
                limits=limits,
                is_invalid_replay=lambda exc: isinstance(exc, ReplayIdInvalidError),
            )
            ticks += 1
            cursor = outcome.cursor
            events += sum(report.events for report in outcome.reports)
            if all(report.caught_up for report in outcome.reports):
                break
        elapsed = time.perf_counter() - started
    parts = dict(timers.seconds)
    parts["other"] = elapsed - sum(parts.values())
    return DrainResult(label, bound, events, ticks, elapsed, parts)


def drain_fetch_only(target: str, bound: int) -> DrainResult:
    """Baseline: the same bounded fetches per channel and tick, nothing decoded or staged."""
    resume: dict[str, bytes | None] = dict.fromkeys(DEFAULT_CHANNELS)
    events = ticks = 0
    timers = Timers()
    with PubSubClient(
        target, StaticTokenProvider(TOKEN, "http://sandbox", TENANT), tls=False
    ) as client:
        started = time.perf_counter()
        while True:
            ticks += 1
            caught_up = True
            for channel in DEFAULT_CHANNELS:
                after = resume[channel]
                fetch_started = time.perf_counter()
                result = client.fetch(
                    channel,
                    replay_id=after,
                    preset="CUSTOM" if after else "EARLIEST",
                    max_events=bound,
                    max_seconds=FETCH_SECONDS,
                )
                timers.seconds[fetch_part(result, bound)] += time.perf_counter() - fetch_started
                events += len(result.events)
                resume[channel] = result.latest_replay_id or after
                caught_up = caught_up and len(result.events) < bound
            if caught_up:
                break
        elapsed = time.perf_counter() - started
    parts = dict(timers.seconds)
    parts["other"] = elapsed - sum(parts.values())
    return DrainResult("fetch only (baseline)", bound, events, ticks, elapsed, parts)


@contextmanager
def ledger_at(kind: str, name: str) -> Iterator[Ledger]:
    """A fresh, migrated ledger; PostgreSQL databases are dropped afterwards."""
    if kind == "sqlite":
        ledger = Ledger.from_url(f"sqlite:///{WORKDIR / f'{name}.db'}")
        try:
            yield ledger
        finally:
            ledger.dispose()
        return
    database = f"bench_drain_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    ledger = Ledger.from_url(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}")
    try:
        yield ledger
    finally:
        ledger.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def print_table(results: list[DrainResult], baselines: dict[int, DrainResult]) -> None:
    header = (
        "| ledger | bound/tick | events | ticks | time | events/s | events/s w/o tail "
        "| vs fetch only (w/o tail) | fetch | tail fetches | decode | staging | other |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in results:
        base = baselines[r.bound]
        share = {k: f"{v:.2f} s ({100 * v / r.seconds:.0f} %)" for k, v in r.parts.items()}
        ratio = f"{r.busy_rate / base.busy_rate:.2f}x" if r is not base else "1x"
        cells = [share.get(k, "-") for k in ("fetch", "tail", "decode", "staging", "other")]
        print(
            f"| {r.label} | {r.bound:,} | {r.events:,} | {r.ticks} | {r.seconds:.2f} s "
            f"| {r.rate:,.0f} | {r.busy_rate:,.0f} | {ratio} | " + " | ".join(cells) + " |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--leads", type=int, default=5000, help="simulated leads (≈4.5 events each)"
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--bound", type=int, action="append", help="events per channel and tick")
    parser.add_argument("--ledger", choices=("sqlite", "postgres"), action="append")
    parser.add_argument("--keep", action="store_true", help=f"keep the scratch directory {WORKDIR}")
    args = parser.parse_args()
    bounds = args.bound or [500, 2000]
    kinds = args.ledger or ["sqlite", "postgres"]
    if args.leads < 1 or min(bounds) < 1:
        parser.error("--leads and --bound must be at least 1")

    try:
        return drain_all(args.leads, args.seed, bounds, kinds)
    finally:
        if not args.keep:
            shutil.rmtree(WORKDIR, ignore_errors=True)


def drain_all(leads: int, seed: int, bounds: list[int], kinds: list[str]) -> int:
    started = time.perf_counter()
    total = fill_store(WORKDIR / "sandbox.db", leads, seed)
    print(f"sandbox store: {total:,} change events from {leads:,} leads "
          f"({time.perf_counter() - started:.1f} s to simulate); machine {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    results: list[DrainResult] = []
    baselines: dict[int, DrainResult] = {}
    # Plaintext: the drain figures in RESULTS.md were measured without TLS and stay comparable.
    runtime = SandboxRuntime(
        WORKDIR / "sandbox.db", access_token=TOKEN, tenant_id=TENANT, plaintext=True
    )
    with runtime:
        for bound in bounds:
            baselines[bound] = drain_fetch_only(runtime.pubsub_target, bound)
            results.append(baselines[bound])
            for kind in kinds:
                with ledger_at(kind, f"ledger_{bound}") as ledger:
                    result = drain_with_ticks(runtime.pubsub_target, ledger, bound, kind)
                results.append(result)
            for result in results[-1 - len(kinds) :]:
                if result.events != total:
                    print(f"FAILED: {result.label} drained {result.events} of {total} events")
                    return 1
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print_table(results, baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
