"""A real org's keepalive cadence (one empty response per quiet stream within 270 s), not the
protocol tests' 0.2 s: fetches still return at once when caught up, the stream's top-ups
keep events flowing, a quiet spell neither stalls nor reopens the stream, and a closed
stream frees its server thread without waiting for the next keepalive."""

from __future__ import annotations

import threading
import time

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.config import Settings
from kpi_pipeline.sandbox.pubsub_server import KEEPALIVE_INTERVAL_S
from kpi_pipeline_tests.support.pubsub import Recorder, Running, add_lead, rid, subscriber

LEADS = "/data/LeadChangeEvent"


def test_the_defaults_are_a_real_orgs_and_the_stall_timeout_outlasts_them() -> None:
    settings = Settings(_env_file=None)
    assert KEEPALIVE_INTERVAL_S == settings.sandbox_keepalive_seconds == 270.0
    # Otherwise every quiet spell would look like a dead stream and be reopened.
    assert settings.cdc_stall_timeout_seconds > settings.sandbox_keepalive_seconds


def test_a_caught_up_fetch_returns_at_once_with_the_position(
    change_log, start_server, make_client
) -> None:
    for n in range(1, 6):
        add_lead(change_log, n)
    server = start_server(change_log, keepalive_interval_s=KEEPALIVE_INTERVAL_S)
    client = make_client(server)
    started = time.monotonic()
    first = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=100, max_seconds=30)
    again = client.fetch(
        LEADS, replay_id=first.latest_replay_id, preset="CUSTOM", max_events=100, max_seconds=30
    )
    # The first response of a stream is immediate; nothing waits for a 270 s keepalive.
    assert time.monotonic() - started < 5
    assert len(first.events) == 5 and again.events == [] and again.keepalives == 1
    assert again.latest_replay_id == rid(5)


def test_stream_tops_up_and_survives_a_quiet_spell_without_reopening(
    change_log, start_server, make_client, tmp_path
) -> None:
    for n in range(1, 251):
        add_lead(change_log, n)
    server = start_server(change_log, keepalive_interval_s=KEEPALIVE_INTERVAL_S)
    client = make_client(server)  # default stall timeout (300 s)
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        sub = subscriber(client, ledger, [LEADS])
        recorder = Recorder(ledger, client)
        running = Running(sub, recorder)
        # 250 events through a window of 100: only top-ups get past the first 100.
        running.wait_for(lambda: ledger.replay_id(LEADS) == rid(250), "backlog staged")
        time.sleep(3.0)  # quiet: no keepalive is due for minutes
        started = time.monotonic()
        for n in range(251, 261):
            add_lead(change_log, n)
        running.wait_for(lambda: ledger.replay_id(LEADS) == rid(260), "live events staged")
        latency = time.monotonic() - started
        running.finish()
    finally:
        ledger.dispose()
    assert latency < 3.0  # the server wakes on new events, not on the keepalive timer
    assert recorder.delivered(LEADS) == list(range(1, 261))
    assert server.faults.max_outstanding_seen <= 100
    assert server.faults.subscribe_calls == 1 and sub.stats[LEADS].reconnects == 0


def test_a_closed_stream_frees_its_thread_before_the_next_keepalive(
    change_log, start_server, make_client
) -> None:
    add_lead(change_log, 1)
    # Two worker threads: if a closed stream held its thread until the next keepalive (270 s),
    # the third call below would wait for minutes.
    server = start_server(change_log, keepalive_interval_s=KEEPALIVE_INTERVAL_S, max_workers=2)
    client = make_client(server)
    for _ in range(2):
        client.fetch(LEADS, replay_id=rid(1), preset="CUSTOM", max_events=1, max_seconds=5)
    done = threading.Event()

    def third() -> None:
        client.get_topic(LEADS)
        done.set()

    threading.Thread(target=third, daemon=True).start()
    assert done.wait(10), "a closed stream kept its server thread"
