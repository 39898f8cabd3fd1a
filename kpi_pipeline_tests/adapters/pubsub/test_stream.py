"""StreamSubscriber over the real sandbox gRPC server, staging into real ledgers.

Waits are bounded by a generous guard so a broken subscriber fails instead of hanging;
no test asserts how fast anything happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
from kpi_pipeline.adapters.ledger import Ledger, ReplayPositionMoved
from kpi_pipeline.core.errors import PubSubAuthError, ReplayIdInvalidError
from kpi_pipeline.core.raw import StreamBatch
from kpi_pipeline_tests.support.pubsub import (
    GUARD_S,
    INSTANCE_URL,
    TENANT_ID,
    Recorder,
    Running,
    add_lead,
    add_task,
    inbox_replays,
    rid,
    subscriber,
)

LEADS = "/data/LeadChangeEvent"
TASKS = "/data/TaskChangeEvent"


@pytest.fixture
def stream_ledger(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger.from_url(ledger_url)
    yield ledger
    ledger.dispose()


def test_events_are_staged_with_their_replay_id_and_flow_control_stays_within_100(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    for n in range(1, 251):
        add_lead(change_log, n)
    for n in range(251, 281):
        add_task(change_log, n)
    server = start_server(change_log)
    client = make_client(server)
    recorder = Recorder(stream_ledger, client)
    running = Running(subscriber(client, stream_ledger, [LEADS, TASKS]), recorder)
    both_at = lambda n: all(stream_ledger.replay_id(c) == rid(n) for c in (LEADS, TASKS))  # noqa: E731
    running.wait_for(lambda: both_at(280), "both channels staged up to 280")
    for n in range(281, 301):  # live events reach the open streams
        add_lead(change_log, n)
    running.wait_for(lambda: both_at(300), "both channels at 300")
    running.finish()

    assert inbox_replays(stream_ledger, LEADS) == [*range(1, 251), *range(281, 301)]
    assert inbox_replays(stream_ledger, TASKS) == list(range(251, 281))
    assert recorder.delivered(LEADS) == [*range(1, 251), *range(281, 301)]
    assert server.faults.subscribe_calls == 2  # one long-lived stream per channel
    assert server.faults.max_outstanding_seen <= 100
    assert all(len(b.events) <= 100 for b in recorder.batches)
    assert recorder.atomic_violations == []
    assert recorder.chain_breaks(LEADS) == [] and recorder.chain_breaks(TASKS) == []
    positions = {p.channel: p for p in stream_ledger.replay_positions()}
    assert positions[LEADS].commit_ms is not None and positions[LEADS].updated_by == "stream"


def test_keepalives_advance_the_durable_replay_id(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    for n in range(1, 4):
        add_lead(change_log, n)
    for n in range(4, 9):
        add_task(change_log, n)  # other entities: the lead stream only sees keepalives
    client = make_client(start_server(change_log))
    recorder = Recorder(stream_ledger, client)
    running = Running(subscriber(client, stream_ledger, [LEADS]), recorder)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(8), "keepalive to 8")
    running.finish()

    assert inbox_replays(stream_ledger, LEADS) == [1, 2, 3]
    assert any(b.is_keepalive and b.latest_replay_id == rid(8) for b in recorder.batches)


def test_stream_resets_and_closes_reconnect_from_the_durable_replay_id(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    for n in range(1, 151):
        add_lead(change_log, n)
    server = start_server(change_log)
    server.faults.reset_stream_after(130)  # UNAVAILABLE mid-stream, as after an RST_STREAM
    client = make_client(server)

    def refuse_the_reopening(batch: StreamBatch) -> None:
        # The receiver reopens only after this batch is handled, so this hits that Subscribe.
        if batch.latest_replay_id == rid(130) and not server.faults.subscribe_calls > 1:
            server.faults.service_unavailable_next(1)

    recorder = Recorder(stream_ledger, client, before=refuse_the_reopening)
    sub = subscriber(client, stream_ledger, [LEADS])
    running = Running(sub, recorder)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(150), "150 staged")
    server.faults.close_stream_after(20)  # then a clean close by the server
    for n in range(151, 201):
        add_lead(change_log, n)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(200), "200 staged")
    running.finish()

    assert recorder.delivered(LEADS) == list(range(1, 201))  # nothing lost, nothing twice
    assert inbox_replays(stream_ledger, LEADS) == list(range(1, 201))
    assert recorder.chain_breaks(LEADS) == []
    reopened_after = [b.previous_replay_id for b in recorder.batches if b.events][1:]
    assert rid(130) in reopened_after and rid(170) in reopened_after
    assert server.faults.subscribe_calls == 4 and sub.stats[LEADS].reconnects == 3
    assert recorder.atomic_violations == []


def test_a_stopped_stream_resumes_after_the_durable_replay_id(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    for n in range(1, 201):
        add_lead(change_log, n)
    client = make_client(start_server(change_log))
    first = Recorder(stream_ledger, client)
    running = Running(subscriber(client, stream_ledger, [LEADS], window=30), first)
    running.wait_for(lambda: len(first.delivered(LEADS)) >= 60, "60 events")
    running.finish()
    stopped_at = stream_ledger.replay_id(LEADS)
    assert stopped_at == first.batches[-1].latest_replay_id

    second = Recorder(stream_ledger, client)
    running = Running(subscriber(client, stream_ledger, [LEADS], window=30), second)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(200), "all 200 staged")
    running.finish()
    assert first.delivered(LEADS) + second.delivered(LEADS) == list(range(1, 201))
    assert second.chain_breaks(LEADS, start=stopped_at) == []
    assert inbox_replays(stream_ledger, LEADS) == list(range(1, 201))


def test_a_handler_slower_than_the_idle_timeout_keeps_the_stream_open(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    """The window is exactly the backlog, so only the top-up at dequeue keeps events
    requested while the handler blocks; without it the server closes the idle stream."""
    for n in range(1, 6):
        add_lead(change_log, n)
    server = start_server(change_log, idle_timeout_s=0.5, keepalive_interval_s=0.1)
    client = make_client(server)
    sub = subscriber(client, stream_ledger, [LEADS], window=5)
    keepalives_while_blocked: list[int] = []

    def block_first_batch(batch: StreamBatch) -> None:
        if batch.events and batch.previous_replay_id is None:
            before = sub.stats[LEADS].keepalives
            time.sleep(3 * server.servicer.idle_timeout_s)
            keepalives_while_blocked.append(sub.stats[LEADS].keepalives - before)

    recorder = Recorder(stream_ledger, client, before=block_first_batch)
    running = Running(sub, recorder)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(5), "first 5 staged")
    for n in range(6, 11):
        add_lead(change_log, n)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(10), "next 5 staged")
    running.finish()

    assert keepalives_while_blocked and keepalives_while_blocked[0] > 0
    assert server.faults.subscribe_calls == 1 and sub.stats[LEADS].reconnects == 0
    assert recorder.delivered(LEADS) == list(range(1, 11))


def test_a_handler_stuck_on_a_busy_channel_loses_and_doubles_nothing(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    """Here a whole window queues up behind the handler, so the server may close the idle
    stream; the subscriber resubscribes after the durable id once the queue is handled."""
    for n in range(1, 61):
        add_lead(change_log, n)
    server = start_server(change_log, idle_timeout_s=0.5, keepalive_interval_s=0.1)
    client = make_client(server)

    def block_first_batch(batch: StreamBatch) -> None:
        if batch.events and batch.previous_replay_id is None:
            time.sleep(3 * server.servicer.idle_timeout_s)

    recorder = Recorder(stream_ledger, client, before=block_first_batch)
    running = Running(subscriber(client, stream_ledger, [LEADS], window=10), recorder)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(60), "all 60 staged")
    running.finish()

    assert recorder.delivered(LEADS) == list(range(1, 61))
    assert inbox_replays(stream_ledger, LEADS) == list(range(1, 61))
    assert recorder.chain_breaks(LEADS) == []
    assert server.faults.max_outstanding_seen <= 10


@pytest.mark.parametrize("stored", [b"\x01\x02\x03", rid(999)], ids=["corrupted", "never-issued"])
def test_a_refused_replay_id_raises_the_typed_error(
    change_log, start_server, make_client, stream_ledger: Ledger, stored: bytes
) -> None:
    add_lead(change_log, 1)
    client = make_client(start_server(change_log))
    stream_ledger.set_replay_id(LEADS, stored)
    with pytest.raises(ReplayIdInvalidError) as info:
        subscriber(client, stream_ledger, [LEADS]).run(
            Recorder(stream_ledger, client), threading.Event()
        )
    assert info.value.rpc_id


def test_a_rejected_token_raises_the_auth_error_after_one_refresh(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    server = start_server(change_log)
    client = make_client(server, auth=StaticTokenProvider("expired", INSTANCE_URL, TENANT_ID))
    with pytest.raises(PubSubAuthError):
        subscriber(client, stream_ledger, [LEADS]).run(
            Recorder(stream_ledger, client), threading.Event()
        )
    assert server.faults.subscribe_calls == 2


def test_an_operator_moving_the_replay_id_stops_the_running_stream(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    add_lead(change_log, 1)
    client = make_client(start_server(change_log))
    running = Running(subscriber(client, stream_ledger, [LEADS]), Recorder(stream_ledger, client))
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(1), "first event staged")
    stream_ledger.reset_replay_id(LEADS)  # the operator: restart this channel from the preset
    add_lead(change_log, 2)
    running.thread.join(GUARD_S)
    assert isinstance(running.error, ReplayPositionMoved)
    assert stream_ledger.replay_id(LEADS) is None


def test_a_silent_stream_is_presumed_dead_and_reopened(
    change_log, start_server, make_client, stream_ledger: Ledger
) -> None:
    add_lead(change_log, 1)
    server = start_server(change_log)
    client = make_client(server, stall_timeout_s=0.5)
    sub = subscriber(client, stream_ledger, [LEADS])
    running = Running(sub, Recorder(stream_ledger, client))
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(1), "first event staged")
    server.faults.silence_streams()  # a half-open connection: not even keepalives
    running.wait_for(lambda: sub.stats[LEADS].reconnects >= 1, "the stall watchdog")
    server.faults.silence_streams(False)
    add_lead(change_log, 2)
    running.wait_for(lambda: stream_ledger.replay_id(LEADS) == rid(2), "second event staged")
    running.finish()

    assert "presumed dead" in sub.stats[LEADS].last_error
    assert inbox_replays(stream_ledger, LEADS) == [1, 2]
