"""Staging throughput: what the stream worker does with each FetchResponse before processing
it (``Ledger.stage_and_advance``: the events into the ledger inbox and the durable replay id,
one transaction and one commit a response).

``--responses`` FetchResponses of ``--events`` events each (100: the Pub/Sub API's most) are
staged into a fresh SQLite ledger (synchronous=FULL, as the live path runs it); prints the
seconds the staging took, the imports and the ledger's creation apart. To compare two
revisions, run it with each on PYTHONPATH, alternately (bench/RESULTS.md, Catch-up).

    PYTHONPATH=. python bench/bench_staging.py [--responses 300] [--events 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.raw import RawEvent

CHANNEL = "/data/LeadChangeEvent"
PAYLOAD = bytes(range(256)) * 4  # about the size of a Lead change event's Avro payload


def stage(ledger: Ledger, responses: int, events: int) -> float:
    """Seconds to stage ``responses`` responses of ``events`` events, each after the last."""
    previous: bytes | None = None
    position = 0
    started = time.perf_counter()
    for _ in range(responses):
        batch = []
        for _ in range(events):
            position += 1
            replay_id = position.to_bytes(8, "big")
            batch.append(RawEvent(CHANNEL, replay_id, "schema-1", PAYLOAD, f"e{position}"))
        latest = batch[-1].replay_id
        ledger.stage_and_advance(
            CHANNEL, batch, {"schema-1": "{}"}, replay_id=latest, expected=previous
        )
        previous = latest
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=300)
    parser.add_argument("--events", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as scratch:
        ledger = Ledger.from_url(f"sqlite:///{Path(scratch) / 'ledger.db'}")
        try:
            seconds = stage(ledger, args.responses, args.events)
        finally:
            ledger.dispose()
    staged = args.responses * args.events
    print(
        f"{staged} events in {args.responses} responses: {seconds:.3f} s, {staged / seconds:,.0f} events/s"
    )


if __name__ == "__main__":
    main()
