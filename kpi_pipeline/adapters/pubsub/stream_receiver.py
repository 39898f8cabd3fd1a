"""One channel's receiver (an adapter helper of ``stream``): a thread that keeps the
channel's Subscribe stream open, moves its responses onto the inbox, watches for stalls and
reopens the stream after the consumer handled everything queued, from the durable replay id."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.fetch import Preset
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.stream_inbox import Failure, Inbox, Queued, StreamSession
from kpi_pipeline.adapters.pubsub.subscribe_stream import StreamClosed, backoff_delay, raw_events
from kpi_pipeline.core.errors import (
    PubSubAuthError,
    PubSubError,
    ServiceUnavailableError,
    StreamStalledError,
)
from kpi_pipeline.core.raw import StreamBatch
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


@dataclass(frozen=True)
class ReceiverSettings:
    preset: Preset
    window: int
    max_failures: int
    poll_s: float


class Receiver:
    """Keeps one channel's stream open and moves its responses onto the inbox."""

    def __init__(
        self,
        channel: str,
        client: PubSubClient,
        inbox: Inbox,
        halt: threading.Event,
        resume_from: Callable[[str], bytes | None],
        settings: ReceiverSettings,
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
            self._inbox.put(Failure(self.channel, exc))

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
        session = StreamSession(
            self.channel, self._client.open_subscribe(first), settings.window, start
        )
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

    def _watch(self, session: StreamSession, heard_at: float) -> None:
        """Stall watchdog; a stream with nothing requested is silent by design, so skip it."""
        if session.outstanding <= 0:
            return
        quiet = time.monotonic() - max(heard_at, session.credited_at)
        if quiet > self._client.stall_timeout_s:
            raise StreamStalledError(
                f"no response on {self.channel} for {quiet:.1f} s (not even a keepalive) "
                f"with {session.outstanding} events requested; the stream is presumed dead"
            )

    def _enqueue(self, session: StreamSession, response: pb2.FetchResponse) -> None:
        events = raw_events(self.channel, response)
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
        item = Queued(batch, session)
        if events:
            self._inbox.put(item)
        elif self._inbox.put_keepalive(item):
            self.handed_over()  # folded into the queued keepalive: no new entry
