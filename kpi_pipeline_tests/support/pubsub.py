"""The Pub/Sub tests' helpers: the sandbox tenant and its static token, events appended to an
in-memory change log, and a StreamSubscriber run in a thread that records what it staged.

The fixtures that start servers and clients are in adapters/pubsub/conftest.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.adapters.pubsub.stager import LedgerStager, newest_commit_ms
from kpi_pipeline.adapters.pubsub.stream import StreamSubscriber
from kpi_pipeline.core.events import replay_id_from_int, replay_id_to_int
from kpi_pipeline.core.raw import StreamBatch
from kpi_pipeline.sandbox.changelog import InMemoryChangeLog

TENANT_ID = "00D000000000001AAA"


TOKEN = "00D000000000001!sandbox-session"


INSTANCE_URL = "https://sandbox.my.salesforce.com"


AUTH = StaticTokenProvider(TOKEN, INSTANCE_URL, TENANT_ID)


AUTH_METADATA = AUTH.metadata()


def now_ms() -> int:
    return int(time.time() * 1000)


def add_lead(log: InMemoryChangeLog, n: int, *, ts: int | None = None, **fields: Any) -> None:
    ts = now_ms() if ts is None else ts
    header = {"recordIds": [f"00Q{n:015d}"], "changeType": "CREATE", "commitTimestamp": ts}
    body = {"LastName": f"Lead {n}", "Company": "Acme", "CreatedDate": ts, **fields}
    log.append("Lead", {"entityName": "Lead", **header}, body)


def add_task(log: InMemoryChangeLog, n: int, *, ts: int | None = None) -> None:
    ts = now_ms() if ts is None else ts
    header = {"entityName": "Task", "recordIds": [f"00T{n:015d}"], "changeType": "CREATE"}
    log.append(
        "Task",
        {**header, "commitTimestamp": ts},
        {"Subject": f"Call {n}", "WhoId": f"00Q{n:015d}", "Status": "Completed", "CreatedDate": ts},
    )


GUARD_S = 60.0


def rid(n: int) -> bytes:
    return replay_id_from_int(n)


class Recorder:
    """The handler: stages with ``LedgerStager`` and records what it was given."""

    def __init__(self, ledger: Ledger, client, before: Callable[[StreamBatch], None] | None = None):
        decoder = EventDecoder(client.get_schema)
        self.ledger = ledger
        self.stager = LedgerStager(
            ledger, client.get_schema, commit_ms=newest_commit_ms(decoder.decode)
        )
        self.before = before
        self.batches: list[StreamBatch] = []
        self.atomic_violations: list[str] = []

    def __call__(self, batch: StreamBatch) -> None:
        if self.before is not None:
            self.before(batch)
        self.stager(batch)
        if self.ledger.replay_id(batch.channel) != batch.latest_replay_id:
            self.atomic_violations.append(batch.rpc_id)
        self.batches.append(batch)

    def delivered(self, channel: str) -> list[int]:
        return [
            replay_id_to_int(e.replay_id)
            for b in self.batches
            if b.channel == channel
            for e in b.events
        ]

    def chain_breaks(self, channel: str, start: bytes | None = None) -> list[tuple]:
        """Batches whose previous id is not the latest id of the batch before them."""
        breaks, previous = [], start
        for batch in (b for b in self.batches if b.channel == channel):
            if batch.previous_replay_id != previous:
                breaks.append((batch.previous_replay_id, previous))
            previous = batch.latest_replay_id
        return breaks


class Running:
    """``subscriber.run`` in a background thread."""

    def __init__(self, subscriber: StreamSubscriber, handler: Callable[[StreamBatch], None]):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(subscriber, handler), daemon=True)
        self.thread.start()

    def _run(self, subscriber: StreamSubscriber, handler) -> None:
        try:
            subscriber.run(handler, self.stop)
        except BaseException as exc:
            self.error = exc

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + GUARD_S
        while not condition():
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(GUARD_S)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        if self.error is not None:
            raise self.error


def inbox_replays(ledger: Ledger, channel: str) -> list[int]:
    replays = []
    for batch in ledger.pending_batches(channel):
        replays += [replay_id_to_int(e.replay_id) for e in ledger.load_batch(batch.batch_id).events]
    return sorted(replays)


def subscriber(client, ledger: Ledger, channels, **options) -> StreamSubscriber:
    return StreamSubscriber(client, channels, resume_from=ledger.replay_id, **options)
