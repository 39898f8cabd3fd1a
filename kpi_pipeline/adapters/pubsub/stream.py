"""Streaming subscriber: one long-lived Subscribe stream per CDC channel (no Dagster in it).

``StreamSubscriber.run(handler, stop)`` keeps one Subscribe stream open per channel, as the
Pub/Sub API intends, and calls ``handler`` with every FetchResponse in replay order per
channel (``StreamBatch``: events, latest replay id, rpc id). ``LedgerStager`` is the
handler that stages each response in the ledger inbox and advances the channel's durable
replay id in the same transaction.

Receiving and handling are decoupled. A receiver thread per channel reads its stream and
puts each response on a queue; ``run`` takes them off in the caller's thread. Flow control
ties the two together:

* a stream starts with ``window`` (at most 100) events requested;
* when the consumer takes a response off the queue it requests as many events as that
  response carried, so requested-but-unreceived plus queued events never exceed the
  window: the queue is bounded, and a consumer that falls behind stops the top-ups
  (backpressure);
* the receiver never blocks on the queue, so it keeps reading keepalives while the handler
  works; consecutive keepalives of a channel collapse into one queue entry. While a handler
  holds one response, the events it took are already requested again, so the server has
  something pending and sends keepalives instead of closing the stream as idle. Only a
  handler stuck while a whole window of new events is queued lets the server idle-close
  the stream; the receiver then resubscribes (below), so the subscription goes on.

Reconnects: a stream that fails with a transient error (reset, ``service.unavailable``,
stall) or that the server closes is reopened with exponential backoff. Before reopening,
the receiver waits until the handler has finished every response it queued, then reads
the durable replay id (``resume_from``) and resubscribes after it. So nothing queued is
handled twice and nothing is skipped. An auth error invalidates the token once; a refused
replay id (``ReplayIdInvalidError``), an unknown topic, or reconnects that keep failing
without delivering anything end ``run`` with the typed error.

Each batch carries ``previous_replay_id``: the durable replay id the store holds if every
earlier batch of this stream session was staged. The stager uses it as the expected value
of its compare-and-set, which is how "never move the replay id backwards" is enforced for
opaque replay ids (see ``kpi_pipeline.adapters.ledger.replay_store``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kpi_pipeline.adapters.ledger.replay_store import ReplayStoreMixin, StagedResponse
from kpi_pipeline.adapters.pubsub.client import (
    MAX_OUTSTANDING,
    Preset,
    PubSubClient,
    StreamClosed,
    SubscribeStream,
    backoff_delay,
)
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.core.errors import (
    PubSubAuthError,
    PubSubError,
    ServiceUnavailableError,
    StreamStalledError,
)
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.raw import RawEvent, StreamBatch
from kpi_pipeline.telemetry.metrics import record_error

log = logging.getLogger(__name__)


@dataclass
class ChannelStats:
    """Counters of one channel's receiver, for logs and metrics."""

    subscribes: int = 0
    reconnects: int = 0
    events: int = 0
    keepalives: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class _Failure:
    channel: str
    error: BaseException


class _Session:
    """Flow control of one open stream; ``credit`` is called from the consumer thread."""

    def __init__(self, channel: str, stream: SubscribeStream, window: int, start: bytes | None):
        self.channel = channel
        self.previous = start  # latest replay id queued so far in this session
        self.outstanding = window
        self.credited_at = time.monotonic()
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    def credit(self, events: int) -> None:
        """The consumer took ``events`` off the queue: request as many again."""
        with self._lock:
            if self._closed or events <= 0:
                return  # a closed stream's credit does not carry over to its successor
            self.outstanding += events
            self.credited_at = time.monotonic()
            self._stream.send(pb2.FetchRequest(topic_name=self.channel, num_requested=events))

    def receive(self, timeout: float) -> pb2.FetchResponse | None:
        return self._stream.receive(timeout)

    def received(self, events: int) -> None:
        with self._lock:
            self.outstanding -= events

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stream.close()


@dataclass(frozen=True, slots=True)
class _Queued:
    batch: StreamBatch
    session: _Session


class _Inbox:
    """The queue between the receivers and the consumer.

    Bounded by flow control: per channel, queued events plus requested ones never exceed
    the window, and keepalives queued back to back collapse into one entry.
    """

    def __init__(self) -> None:
        self._items: deque[_Queued | _Failure] = deque()
        self._cond = threading.Condition()

    def put(self, item: _Queued | _Failure) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def put_keepalive(self, item: _Queued) -> bool:
        """Queue a keepalive, or fold it into the one at the tail; True if folded."""
        with self._cond:
            tail = self._items[-1] if self._items else None
            if (
                isinstance(tail, _Queued)
                and tail.batch.is_keepalive
                and tail.batch.channel == item.batch.channel
            ):
                # Keep the tail's previous id: that is what the store holds before it.
                self._items[-1] = replace(
                    tail,
                    batch=replace(
                        tail.batch,
                        latest_replay_id=item.batch.latest_replay_id,
                        rpc_id=item.batch.rpc_id,
                    ),
                    session=item.session,
                )
                return True
            self._items.append(item)
            self._cond.notify()
            return False

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def get(self, timeout: float) -> _Queued | _Failure | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None


@dataclass(frozen=True)
class _Settings:
    preset: Preset
    window: int
    max_failures: int
    poll_s: float


class _Receiver:
    """Keeps one channel's stream open and moves its responses onto the inbox."""

    def __init__(
        self,
        channel: str,
        client: PubSubClient,
        inbox: _Inbox,
        halt: threading.Event,
        resume_from: Callable[[str], bytes | None],
        settings: _Settings,
        stats: ChannelStats,
    ) -> None:
        self.channel = channel
        self._client = client
        self._inbox = inbox
        self._halt = halt
        self._resume_from = resume_from
        self._settings = settings
        self.stats = stats
        self._in_flight = 0  # batches queued or being handled
        self._drained = threading.Condition()
        self._progressed = False
        self.thread = threading.Thread(target=self._run, name=f"cdc-stream {channel}", daemon=True)

    def handed_over(self) -> None:
        """The consumer finished one batch of this channel."""
        with self._drained:
            self._in_flight -= 1
            self._drained.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # every failure must reach the consumer, which raises it
            self._inbox.put(_Failure(self.channel, exc))

    def _loop(self) -> None:
        failures = 0
        auth_retried = False
        while not self._halt.is_set():
            if not self._wait_drained():
                return
            self._progressed = False
            try:
                self._session(self._resume_from(self.channel))
                return  # only a halt ends a session without an exception
            except StreamClosed:
                error: PubSubError | None = None
            except PubSubAuthError:
                if auth_retried:
                    raise
                auth_retried = True
                self._client.auth.invalidate()
                continue
            except PubSubError as exc:
                if not exc.transient:
                    raise
                error = exc
            failures = 0 if self._progressed else failures + 1
            auth_retried = auth_retried and not self._progressed
            self._note_reconnect(error, failures)
            self._halt.wait(
                backoff_delay(
                    max(failures, 1), self._client.backoff_initial_s, self._client.backoff_max_s
                )
            )

    def _note_reconnect(self, error: PubSubError | None, failures: int) -> None:
        if failures > self._settings.max_failures:
            raise error or ServiceUnavailableError(
                f"Subscribe to {self.channel} kept closing without delivering anything "
                f"({failures} times); check the server at {self._client.target}"
            )
        self.stats.reconnects += 1
        self.stats.last_error = str(error) if error else "closed by the server"
        if error is not None:
            record_error("cdc_stream")
        log.info("reopening the stream of %s (%s)", self.channel, self.stats.last_error)

    def _wait_drained(self) -> bool:
        """Wait until the consumer handled everything queued (the store is then the truth)."""
        with self._drained:
            while self._in_flight > 0 and not self._halt.is_set():
                self._drained.wait(self._settings.poll_s)
        return not self._halt.is_set()

    def _session(self, start: bytes | None) -> None:
        settings = self._settings
        first = pb2.FetchRequest(
            topic_name=self.channel,
            # Enum numbers, never names: a name can silently encode as 0 (LATEST).
            replay_preset=pb2.ReplayPreset.Value("CUSTOM" if start else settings.preset),
            replay_id=start or b"",
            num_requested=settings.window,
        )
        session = _Session(self.channel, self._client.open_subscribe(first), settings.window, start)
        self.stats.subscribes += 1
        heard_at = time.monotonic()
        try:
            while not self._halt.is_set():
                response = session.receive(settings.poll_s)
                if response is not None:
                    heard_at = time.monotonic()
                    self._progressed = True
                    self._enqueue(session, response)
                else:
                    self._watch(session, heard_at)
        finally:
            session.close()

    def _watch(self, session: _Session, heard_at: float) -> None:
        """Stall watchdog; a stream with nothing requested is silent by design, so skip it."""
        if session.outstanding <= 0:
            return
        quiet = time.monotonic() - max(heard_at, session.credited_at)
        if quiet > self._client.stall_timeout_s:
            raise StreamStalledError(
                f"no response on {self.channel} for {quiet:.1f} s (not even a keepalive) "
                f"with {session.outstanding} events requested; the stream is presumed dead"
            )

    def _enqueue(self, session: _Session, response: pb2.FetchResponse) -> None:
        events = tuple(
            RawEvent(
                channel=self.channel,
                replay_id=consumer.replay_id,
                schema_id=consumer.event.schema_id,
                payload=consumer.event.payload,
                event_id=consumer.event.id,
            )
            for consumer in response.events
        )
        latest = response.latest_replay_id or (events[-1].replay_id if events else b"")
        if events:
            session.received(len(events))
            self.stats.events += len(events)
        else:
            self.stats.keepalives += 1
            if not latest or latest == session.previous:
                return  # nothing new to make durable
        batch = StreamBatch(self.channel, events, latest, session.previous, response.rpc_id)
        session.previous = latest
        with self._drained:
            self._in_flight += 1
        item = _Queued(batch, session)
        if events:
            self._inbox.put(item)
        elif self._inbox.put_keepalive(item):
            self.handed_over()  # folded into the queued keepalive: no new entry


class StreamSubscriber:
    """One long-lived Subscribe stream per channel; see the module doc.

    ``resume_from(channel)`` returns the durable replay id to resume after (None: start
    from ``initial_preset``); with ``LedgerStager`` it is ``ledger.replay_id``.
    """

    def __init__(
        self,
        client: PubSubClient,
        channels: Sequence[str],
        *,
        resume_from: Callable[[str], bytes | None],
        initial_preset: Preset = "EARLIEST",
        window: int = MAX_OUTSTANDING,
        max_failures: int = 10,
        poll_s: float = 0.2,
    ) -> None:
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct and non-empty, got {list(channels)}")
        if not 1 <= window <= MAX_OUTSTANDING:
            raise ValueError(f"window must be 1..{MAX_OUTSTANDING} events, got {window}")
        if initial_preset not in ("EARLIEST", "LATEST"):
            raise ValueError(f"initial_preset must be EARLIEST or LATEST, got {initial_preset!r}")
        self.client = client
        self.channels = tuple(channels)
        self._resume_from = resume_from
        self._settings = _Settings(initial_preset, window, max_failures, poll_s)
        self.stats: dict[str, ChannelStats] = {c: ChannelStats() for c in self.channels}

    def run(
        self,
        handler: Callable[[StreamBatch], Any],
        stop: threading.Event,
        on_idle: Callable[[], Any] | None = None,
    ) -> None:
        """Subscribe and hand every batch to ``handler`` until ``stop`` is set.

        ``on_idle`` is called whenever the handler has taken every batch queued so far (and
        on each empty poll), so a handler may stage each batch at once and process what it
        staged together: under a burst the server sends many one-event responses, and
        processing them one by one would cap the rate.

        Returns after the batch in hand when ``stop`` is set (queued batches are dropped:
        they are not durable yet and the next run resubscribes after the durable id).
        Raises the handler's exception, or a receiver's fatal ``PubSubError``.
        """
        inbox, halt = _Inbox(), threading.Event()
        receivers = {
            channel: _Receiver(
                channel,
                self.client,
                inbox,
                halt,
                self._resume_from,
                self._settings,
                self.stats[channel],
            )
            for channel in self.channels
        }
        for receiver in receivers.values():
            receiver.thread.start()
        try:
            self._consume(inbox, receivers, handler, stop, on_idle or (lambda: None))
        finally:
            halt.set()
            for receiver in receivers.values():
                receiver.thread.join(timeout=5.0)

    def _consume(
        self,
        inbox: _Inbox,
        receivers: Mapping[str, _Receiver],
        handler: Callable[[StreamBatch], Any],
        stop: threading.Event,
        on_idle: Callable[[], Any],
    ) -> None:
        while not stop.is_set():
            item = inbox.get(self._settings.poll_s)
            if item is None:
                on_idle()
                continue
            if isinstance(item, _Failure):
                if isinstance(item.error, PubSubError):
                    item.error.channel = item.channel  # so the caller can act on that channel
                raise item.error
            item.session.credit(len(item.batch.events))
            try:
                handler(item.batch)
            finally:
                receivers[item.batch.channel].handed_over()
            if inbox.empty():
                on_idle()


# --- staging ---------------------------------------------------------------------------


def newest_commit_ms(
    decode: Callable[[RawEvent], ChangeEvent],
) -> Callable[[Sequence[RawEvent]], int | None]:
    """Newest commit time of a batch, for the replay store; undecodable events are skipped
    here (the processor dead-letters them with their reason)."""

    def newest(events: Sequence[RawEvent]) -> int | None:
        times = []
        for raw in events:
            try:
                times.append(decode(raw).header.commit_timestamp)
            except Exception:  # decoding problems belong to the processor
                continue
        return max(times, default=None)

    return newest


class LedgerStager:
    """Handler that stages a ``StreamBatch`` and advances the durable replay id atomically.

    ``get_schema`` supplies the Avro schema JSON of each schema id (``client.get_schema``);
    ``commit_ms`` optionally reads the newest commit time (``newest_commit_ms``).
    Returns the ledger's ``StagedResponse`` (None for a keepalive on an empty bus).
    """

    def __init__(
        self,
        ledger: ReplayStoreMixin,
        get_schema: Callable[[str], str],
        *,
        commit_ms: Callable[[Sequence[RawEvent]], int | None] | None = None,
    ) -> None:
        self.ledger = ledger
        self._get_schema = get_schema
        self._commit_ms = commit_ms

    def __call__(self, batch: StreamBatch) -> StagedResponse | None:
        if not batch.latest_replay_id:
            return None
        schemas = {
            sid: self._get_schema(sid) for sid in sorted({e.schema_id for e in batch.events})
        }
        return self.ledger.stage_and_advance(
            batch.channel,
            batch.events,
            schemas,
            replay_id=batch.latest_replay_id,
            expected=batch.previous_replay_id,
            commit_ms=self._commit_ms(batch.events) if self._commit_ms and batch.events else None,
        )
