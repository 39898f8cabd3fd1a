"""A lead-partition worker as a plain process (``multiprocessing``, spawn): what one
partitioned ``process_cdc_batch`` run does to the ledger, round after round.

Each round, every worker takes its partition's lease, reads the round's events, keeps its
partition's (``core.lead_partitions`` with ``adapters.ledger.partitions.stored_links``, as
``load_batch`` does), processes them (``BatchProcessor.process``: the merge and every step,
as the job's ops do), records its completion and gives the lease back; then it waits at the
barrier for the other workers (the sensor requests a round only after the previous one).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger import partitions as lp
from kpi_pipeline.core.events import ChangeEvent, read_recorded_lines
from kpi_pipeline.core.lead_partitions import LeadResolver, events_of_partition
from kpi_pipeline_tests.support.processors import make_processor

TTL = timedelta(minutes=5)


def read_rounds(path: Path, size: int) -> list[list[ChangeEvent]]:
    """The events of ``path`` in rounds of at most ``size``, each within one UTC day (the
    test policy's time zone). Two partitions route into a shared pool in the order their
    transactions take its lock, which is arbitrary; within one day every order hands out the
    same turns, but across midnight the turns of two days interleave differently, so a round
    spanning midnight would make the pools' per-day state depend on timing alone."""
    with path.open(encoding="utf-8") as handle:
        events = list(read_recorded_lines(handle))
    rounds: list[list[ChangeEvent]] = []
    for event in events:
        last = rounds[-1] if rounds else None
        if (
            last is None
            or len(last) == size
            or last[-1].commit_time.date() != event.commit_time.date()
        ):
            rounds.append([])
        rounds[-1].append(event)
    return rounds


def process_partition(
    url: str, partition: int, partitions: int, path: str, size: int, barrier: Any
) -> None:
    """Every round of ``path`` for one partition (``partitions == 1``: everything)."""
    ledger = Ledger.from_url(url)
    processor = make_processor(ledger)
    holder = f"worker-{partition}"
    try:
        for number, events in enumerate(read_rounds(Path(path), size)):
            lp.acquire_partition(ledger, partition, partitions, holder=holder, ttl=TTL)
            key = lp.round_key([f"round-{number}"], partitions)
            resolver = LeadResolver.of(events, lp.round_links(ledger, key, events))
            processor.process(events_of_partition(events, partition, partitions, resolver))
            lp.complete_partition(ledger, [f"round-{number}"], partition, partitions, run_id=holder)
            lp.release_partition(ledger, partition, holder=holder)
            if barrier is not None:
                barrier.wait(timeout=300)
    finally:
        ledger.dispose()


def contend(url: str, partition: int, holder: str, barrier: Any, out: Any) -> None:
    """Try to take ``partition`` of 2 at the same moment as the other contenders and report
    whether this process got it or was refused; the holder keeps it until every contender
    has tried (the second barrier), then checks it still holds it and gives it back."""
    ledger = Ledger.from_url(url)
    try:
        barrier.wait(timeout=60)
        try:
            lp.acquire_partition(ledger, partition, 2, holder=holder, ttl=TTL)
        except lp.PartitionBusy as exc:
            out.put((holder, "refused", str(exc)))
            barrier.wait(timeout=60)
            return
        out.put((holder, "holds", ""))
        barrier.wait(timeout=60)
        lp.hold_partition(ledger, partition, 2, holder=holder, ttl=TTL)
        lp.release_partition(ledger, partition, holder=holder)
    finally:
        ledger.dispose()
