"""Streaming subscriber: one long-lived Subscribe stream per CDC channel (no Dagster in it).

``StreamSubscriber.run(handler, stop)`` keeps one Subscribe stream open per channel, as the
Pub/Sub API intends, and calls ``handler`` with every FetchResponse in replay order per
channel (``StreamBatch``: events, latest replay id, rpc id). ``LedgerStager``
(``kpi_pipeline.adapters.pubsub.stager``) is the handler that stages each response in the
ledger inbox and advances the channel's durable replay id in the same transaction.

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

The receivers are ``stream_receiver``, the queue and flow control between them and the
consumer ``stream_inbox``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.fetch import Preset
from kpi_pipeline.adapters.pubsub.stream_inbox import Failure, Inbox
from kpi_pipeline.adapters.pubsub.stream_receiver import ChannelStats, Receiver, ReceiverSettings
from kpi_pipeline.adapters.pubsub.subscribe_stream import MAX_OUTSTANDING
from kpi_pipeline.core.errors import PubSubError
from kpi_pipeline.core.raw import StreamBatch


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
        self._settings = ReceiverSettings(initial_preset, window, max_failures, poll_s)
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
        inbox, halt = Inbox(), threading.Event()
        receivers = {
            channel: Receiver(
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
        inbox: Inbox,
        receivers: Mapping[str, Receiver],
        handler: Callable[[StreamBatch], Any],
        stop: threading.Event,
        on_idle: Callable[[], Any],
    ) -> None:
        while not stop.is_set():
            item = inbox.get(self._settings.poll_s)
            if item is None:
                on_idle()
                continue
            if isinstance(item, Failure):
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
