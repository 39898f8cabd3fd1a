"""The live path in stream mode: subscribe, stage, process, write back, in one long-lived loop.

``StreamWorker.run`` is what one generation of the ``cdc_stream`` run does (no Dagster
here; ``kpi_pipeline.defs.cdc.stream`` wraps it):

1. take the lease of every configured channel (``Ledger.acquire_leases``); a channel
   another live run holds is waited for, and taken over once that run's lease expires
   (it was killed), so two consumers never process one channel at once;
2. finish what a previous generation staged but did not process (a kill between staging
   and processing), oldest first;
3. keep one Subscribe stream per channel open (``kpi_pipeline.adapters.pubsub.stream``) and, for every
   FetchResponse: stage it and advance the channel's durable replay id in one transaction;
   once nothing more is queued (or ``COALESCE_EVENTS`` are staged), process every batch
   staged so far in one pass (the same ``BatchProcessor`` steps as a batch run), mark each
   done, and wake the write-back drain, which sends the outbox on a thread of its own
   (``background_drain.py``) while the next responses are staged and processed;
4. end after ``lifetime`` (a generation), releasing the leases so the next generation
   starts at once; batches received but not staged are not durable yet, and the next
   generation resubscribes after the durable replay id, so nothing is lost or doubled.

A refused replay id (outside retention, corrupted) records a re-sync window, forgets the
channel's position and resubscribes from ``on_invalid_replay``, as sensor mode does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from kpi_pipeline.app.background_drain import BackgroundDrain
from kpi_pipeline.core.errors import ReplayIdInvalidError
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.core.raw import StreamBatch
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.telemetry import logs, metrics

log = logging.getLogger(__name__)
# Upper bound of events staged before they are processed together, so a long burst still
# reaches the ledger's decisions and the org in steps of bounded size.
COALESCE_EVENTS = 500


class Subscription(Protocol):
    """One subscription to the channels (``kpi_pipeline.adapters.pubsub.stream.StreamSubscriber``):
    hands each FetchResponse to ``handler`` until ``stop`` is set, calling ``on_idle`` when
    nothing more is queued; raises ``ReplayIdInvalidError`` when the org refuses the replay id."""

    def run(
        self,
        handler: Callable[[StreamBatch], None],
        stop: threading.Event,
        *,
        on_idle: Callable[[], None] | None = None,
    ) -> Any: ...


# (channels, the durable replay id per channel, the preset for a channel without one)
SubscriptionFactory = Callable[[Sequence[str], Callable[[str], bytes | None], str], Subscription]


@dataclass
class StreamProgress:
    """What a generation did, for its run's logs and metadata."""

    batches: int = 0
    events: int = 0
    keepalives: int = 0
    processed: int = 0
    drained: int = 0
    restarts: int = 0
    resync_windows: list[int] = field(default_factory=list)
    waited_for_lease_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "waited_for_lease_s": round(self.waited_for_lease_s, 3)}


@dataclass(frozen=True, slots=True)
class StreamLimits:
    lifetime: timedelta
    lease_ttl: timedelta = timedelta(seconds=30)
    initial_preset: str = "EARLIEST"
    on_invalid_replay: str = "EARLIEST"


class LeaseLost(RuntimeError):
    """Another run holds a channel this one was consuming (its renewal came too late)."""


class StreamWorker:
    def __init__(
        self,
        *,
        ledger: Any,
        processor: Any,
        subscribe: SubscriptionFactory,
        stager: Callable[[StreamBatch], Any],
        decoder: Any,
        channels: Sequence[str],
        drain: Callable[[], Any] | None,
        holder: str,
        limits: StreamLimits,
        on_progress: Callable[[StreamProgress], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.processor = processor
        self.subscribe = subscribe
        self.decoder = decoder
        self.channels = tuple(channels)
        self.drain = drain
        self.holder = holder
        self.limits = limits
        self.progress = StreamProgress()
        self._staged: list[str] = []  # staged by ``stage``, not processed yet
        self._staged_events = 0
        self._on_progress = on_progress or (lambda _p: None)
        self._stager = stager
        self._background: BackgroundDrain | None = None  # while ``run`` is consuming

    # --- the generation -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> StreamProgress:
        """One generation: until ``stop`` is set or the lifetime has passed."""
        deadline = time.monotonic() + self.limits.lifetime.total_seconds()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop.set)
        timer.daemon = True
        timer.start()
        try:
            if not self._wait_for_leases(stop):
                return self.progress
            with self._lease_heartbeat(stop), self._drain_beside():
                self._process_pending()
                self._consume(stop)
        finally:
            timer.cancel()
            self.ledger.release_leases(self.holder)
        return self.progress

    def _wait_for_leases(self, stop: threading.Event) -> bool:
        started = time.monotonic()
        ttl = self.limits.lease_ttl
        while not stop.is_set():
            held = self.ledger.acquire_leases(self.holder, self.channels, ttl=ttl)
            if held == set(self.channels):
                self.progress.waited_for_lease_s = time.monotonic() - started
                return True
            # Partial: give back what we took, so two runs never each hold half and wait.
            self.ledger.release_leases(self.holder)
            log.info("channels held by another stream run; waiting for their leases")
            stop.wait(min(5.0, ttl.total_seconds() / 3))
        return False

    def _lease_heartbeat(self, stop: threading.Event):
        """Renew the leases every third of their time to live; a lost lease stops the run."""
        worker = self
        interval = self.limits.lease_ttl.total_seconds() / 3

        class _Heartbeat:
            def __enter__(self) -> None:
                self.done = threading.Event()
                self.lost: set[str] = set()
                self.thread = threading.Thread(target=self._beat, name="lease-heartbeat")
                self.thread.daemon = True
                self.thread.start()

            def _beat(self) -> None:
                while not self.done.wait(interval):
                    try:
                        held = worker.ledger.renew_leases(
                            worker.holder, ttl=worker.limits.lease_ttl
                        )
                    except Exception as exc:  # a ledger hiccup: try again next beat
                        log.warning("lease renewal failed: %s", exc)
                        continue
                    self.lost = set(worker.channels) - held
                    if self.lost:
                        log.error("lost the lease of %s; stopping this stream run", self.lost)
                        stop.set()
                        return

            def __exit__(self, *exc: object) -> None:
                self.done.set()
                self.thread.join(timeout=5.0)
                if self.lost and exc[0] is None:
                    raise LeaseLost(f"another stream run took over {sorted(self.lost)}")

        return _Heartbeat()

    # --- work ---------------------------------------------------------------------------

    def _process_pending(self) -> None:
        """Batches a killed generation staged but did not finish, oldest first."""
        for info in self.ledger.pending_batches():
            if info.channel in self.channels:
                self._process(info.batch_id)
        self._drain()

    def _consume(self, stop: threading.Event) -> None:
        while not stop.is_set():
            subscriber = self.subscribe(
                self.channels, self.ledger.replay_id, self.limits.initial_preset
            )
            try:
                subscriber.run(self.stage, stop, on_idle=self.flush)
            except ReplayIdInvalidError as exc:
                self.flush()  # what this subscription staged, before resubscribing
                self._restart_after_refused_replay(exc)
                continue
            # Ended (lifetime, cancel or a lost lease): process what was staged only while
            # every lease is still ours; otherwise the channel's new holder does it.
            if self.ledger.renew_leases(self.holder, ttl=self.limits.lease_ttl) >= set(
                self.channels
            ):
                self.flush()
            return

    def handle(self, batch: StreamBatch) -> None:
        """One FetchResponse: stage it with the durable replay id, process it, write back."""
        self.stage(batch)
        self.flush()

    def stage(self, batch: StreamBatch) -> None:
        """Stage one FetchResponse with its durable replay id; processing waits for
        ``flush``, which the subscriber calls once nothing more is queued (or every
        ``COALESCE_EVENTS`` events), so a burst of small responses is processed together.
        A kill in between loses nothing: the next generation processes what is staged."""
        staged = self._stager(batch)
        self.progress.batches += 1
        if batch.is_keepalive:
            self.progress.keepalives += 1
        else:
            self.progress.events += len(batch.events)
        if staged is not None and staged.batch_id is not None:
            self._staged.append(staged.batch_id)
            self._staged_events += len(batch.events)
            if self._staged_events >= COALESCE_EVENTS:
                self.flush()
        self._on_progress(self.progress)

    def flush(self) -> None:
        """Process every batch staged since the last flush in one pass, then write back."""
        if not self._staged:
            return
        batch_ids, self._staged, self._staged_events = self._staged, [], 0
        self._process_together(batch_ids)
        self._drain()

    def _process(self, batch_id: str) -> None:
        self._process_together([batch_id])

    def _process_together(self, batch_ids: Sequence[str]) -> None:
        with logs.bind_context(batch_id=batch_ids[0], run_id=self.holder):
            loaded = [self.ledger.load_batch(batch_id) for batch_id in batch_ids]
            decoded = [self.processor.decode(batch, self.decoder) for batch in loaded]
            summary = self.processor.process([e for d in decoded for e in d.events])
            summary["dead_lettered_on_decode"] = sum(d.dead_lettered for d in decoded)
            summary["batches"] = len(batch_ids)
            for batch, result in zip(loaded, decoded, strict=True):
                if self.ledger.mark_batch_done(
                    batch.batch_id, run_id=self.holder, summary=_brief(summary)
                ):
                    self.progress.processed += 1
                    observe_processing_lag(
                        batch.channel, [e.header.commit_timestamp for e in result.events]
                    )

    @contextmanager
    def _drain_beside(self) -> Iterator[None]:
        """Write back on a thread of its own while the generation consumes; the last drain
        runs here when it ends. ``handle``/``flush`` called outside ``run`` drain inline."""
        if self.drain is None:
            yield
            return
        with BackgroundDrain(self.drain, self._count_drained) as background:
            self._background = background
            try:
                yield
            finally:
                self._background = None

    def _drain(self) -> None:
        if self._background is not None:
            self._background.request()
        elif self.drain is not None:
            self._count_drained(self.drain())

    def _count_drained(self, result: Any) -> None:
        self.progress.drained += len(result.report.sent)

    def _restart_after_refused_replay(self, exc: ReplayIdInvalidError) -> None:
        channel = exc.channel or ""
        if channel not in self.channels:
            raise exc
        position = self.ledger.replay_id(channel)
        log.warning(
            "replay id %s of %s was refused (%s); re-sync window recorded, restarting from %s",
            replay_id_hex(position) if position else None,
            channel,
            exc,
            self.limits.on_invalid_replay,
        )
        metrics.record_error("cdc_replay_invalid")
        window = self.ledger.record_resync_window(
            ResyncGap(
                channel=channel,
                reason="replay_id_invalid",
                from_replay=position,
                from_time_ms=_stored_commit_ms(self.ledger, channel),
                to_time_ms=None,
                detail={"error": str(exc)[:500], "restart_preset": self.limits.on_invalid_replay},
            )
        )
        self.progress.resync_windows.append(window)
        self.progress.restarts += 1
        self.ledger.reset_replay_id(channel)


def _stored_commit_ms(ledger: Any, channel: str) -> int | None:
    for position in ledger.replay_positions():
        if position.channel == channel:
            return position.commit_ms
    return None


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The batch summary kept in the ledger: counts, not the lists of lead ids."""
    return {
        step: {k: v for k, v in value.items() if not isinstance(v, list)}
        if isinstance(value, dict)
        else value
        for step, value in summary.items()
    }


def observe_processing_lag(channel: str, commit_ms: Sequence[int]) -> None:
    """``cdc_processing_lag_seconds``: each change's commit in the org -> its batch processed."""
    done_ms = time.time() * 1000.0
    for committed in commit_ms:
        metrics.observe_processing_lag(channel, (done_ms - committed) / 1e3)
