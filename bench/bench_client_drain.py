"""Client drain rate: ``PubSubClient.fetch`` from the sandbox Pub/Sub server over loopback.

The server runs in a child process (its own GIL, as a real server would be) over an
``InMemoryChangeLog`` of synthetic events; the client drains them in one fetch with
the real flow control (≤ 100 outstanding) and optionally decodes them.

    python bench/bench_client_drain.py [--events 20000] [--repeats 3] [--same-process]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import synthetic_changes

from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.sandbox.changelog import InMemoryChangeLog
from kpi_pipeline.sandbox.pubsub_server import start_pubsub_server

TOKEN, TENANT = "bench-token", "00D000000000001AAA"
CHANNEL = "/data/SalesKpis__chn"


def filled_log(count: int) -> InMemoryChangeLog:
    log = InMemoryChangeLog()
    now = int(time.time() * 1000)
    for change in synthetic_changes(count):
        header = {**change.header, "commitTimestamp": now}  # inside retention
        log.append(change.entity, header, change.fields)
    return log


def serve(count: int, ports: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    server = start_pubsub_server(
        filled_log(count), token_validator=lambda t: t == TOKEN, tenant_id=TENANT
    )
    ports.put(server.port)
    stop.wait()
    server.stop(grace=None)


def drain(target: str, count: int, decode: bool) -> float:
    """Seconds to fetch (and decode) every event with a fresh client."""
    with PubSubClient(
        target, StaticTokenProvider(TOKEN, "https://sandbox", TENANT), tls=False
    ) as client:
        decoder = EventDecoder(client.get_schema)
        started = time.perf_counter()
        result = client.fetch(
            CHANNEL, replay_id=None, preset="EARLIEST", max_events=count, max_seconds=300
        )
        if decode:
            for raw in result.events:
                decoder.decode(raw)
        elapsed = time.perf_counter() - started
    if len(result.events) != count or result.reconnects:
        raise SystemExit(f"drained {len(result.events)} of {count}, {result.reconnects} reconnects")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--same-process", action="store_true", help="server threads share the GIL")
    args = parser.parse_args()
    if args.same_process:
        server = start_pubsub_server(
            filled_log(args.events), token_validator=lambda t: t == TOKEN, tenant_id=TENANT
        )
        port, stop_server = server.port, server.stop
    else:
        ports: multiprocessing.Queue = multiprocessing.Queue()
        stop = multiprocessing.Event()
        child = multiprocessing.Process(target=serve, args=(args.events, ports, stop), daemon=True)
        child.start()
        port = ports.get(timeout=120)

        def stop_server() -> None:
            stop.set()
            child.join(10)

    target = f"127.0.0.1:{port}"
    try:
        for decode in (False, True):
            times = [drain(target, args.events, decode) for _ in range(args.repeats)]
            label = "fetch + decode" if decode else "fetch only"
            print(f"{label}: {args.events / statistics.median(times):,.0f} events/s "
                  f"(median {statistics.median(times):.2f} s of {args.repeats}, "
                  f"server {'in-process' if args.same_process else 'child process'})")  # fmt: skip
    finally:
        stop_server()


if __name__ == "__main__":
    main()
