"""Replay ids are opaque bytes of any length: 10-byte ids (as some real orgs issue) through
the client, the stream subscriber, the ledger, the cursor, the recorded JSON form and the
ledger CLI, against a sandbox bus that issues them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.cli.main import main
from kpi_pipeline.core.cursor import ChannelCursor, SensorCursor
from kpi_pipeline.core.errors import ReplayIdInvalidError
from kpi_pipeline.core.events import (
    ChangeEvent,
    ChangeEventHeader,
    EventFormatError,
    read_recorded_lines,
    replay_id_from_int,
)
from kpi_pipeline_tests.support.pubsub import (
    Recorder,
    Running,
    add_lead,
    inbox_replays,
    subscriber,
)

LEADS = "/data/LeadChangeEvent"
WIDE = 10


def wide(n: int) -> bytes:
    return replay_id_from_int(n, WIDE)


def test_client_fetches_and_resumes_with_10_byte_ids(change_log, start_server, make_client) -> None:
    for n in range(1, 31):
        add_lead(change_log, n)
    client = make_client(start_server(change_log, replay_id_bytes=WIDE))
    first = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5)
    assert [e.replay_id for e in first.events] == [wide(n) for n in range(1, 11)]
    assert first.latest_replay_id == wide(10)
    resumed = client.fetch(
        LEADS, replay_id=first.latest_replay_id, preset="CUSTOM", max_events=100, max_seconds=5
    )
    assert [e.replay_id for e in resumed.events] == [wide(n) for n in range(11, 31)]
    caught_up = client.fetch(
        LEADS, replay_id=wide(30), preset="CUSTOM", max_events=5, max_seconds=5,
        idle_return_s=0.5,
    )  # fmt: skip
    assert caught_up.events == [] and caught_up.keepalives >= 1
    assert caught_up.latest_replay_id == wide(30)  # the keepalive position, 10 bytes too


def test_an_id_of_another_length_is_the_orgs_call_not_a_local_error(
    change_log, start_server, make_client
) -> None:
    add_lead(change_log, 1)
    client = make_client(start_server(change_log, replay_id_bytes=WIDE))
    # Our client sends any opaque id as it is; the org decides it is not one of its own.
    for foreign in (replay_id_from_int(1), b"\x01\x02\x03"):
        with pytest.raises(ReplayIdInvalidError):
            client.fetch(LEADS, replay_id=foreign, preset="CUSTOM", max_events=1, max_seconds=5)


def test_stream_stages_10_byte_ids_and_resumes_after_them(
    change_log, start_server, make_client, ledger_url: str
) -> None:
    for n in range(1, 41):
        add_lead(change_log, n)
    client = make_client(start_server(change_log, replay_id_bytes=WIDE))
    ledger = Ledger.from_url(ledger_url)
    try:
        recorder = Recorder(ledger, client)
        running = Running(subscriber(client, ledger, [LEADS]), recorder)
        running.wait_for(lambda: ledger.replay_id(LEADS) == wide(40), "staged up to 40")
        running.finish()
        for n in range(41, 51):
            add_lead(change_log, n)
        again = Running(subscriber(client, ledger, [LEADS]), Recorder(ledger, client))
        again.wait_for(lambda: ledger.replay_id(LEADS) == wide(50), "resumed up to 50")
        again.finish()
        assert inbox_replays(ledger, LEADS) == list(range(1, 51))  # no gap, no duplicate
        batch = ledger.pending_batches(LEADS)[0]
        assert wide(1).hex() in batch.batch_id  # run keys and batch ids hold the whole id
        assert all(len(e.replay_id) == WIDE for e in ledger.load_batch(batch.batch_id).events)
    finally:
        ledger.dispose()


def event_with(replay_id: bytes) -> ChangeEvent:
    header = ChangeEventHeader("Lead", ("00Q000000000001AAA",), "CREATE", commit_timestamp=1)
    return ChangeEvent(LEADS, replay_id, header, {"LastName": "Kim"}, schema_id="s1")


def test_recorded_json_keeps_ids_of_any_length() -> None:
    ten = bytes(range(1, 11))
    recorded = event_with(ten).to_recorded()
    assert recorded["data"]["event"]["replayId"] == base64.b64encode(ten).decode()
    line = json.dumps(recorded)
    (back,) = read_recorded_lines([line])
    assert back.replay_id == ten
    # An 8-byte id keeps Salesforce's integer form.
    eight = replay_id_from_int(123)
    assert event_with(eight).to_recorded()["data"]["event"]["replayId"] == 123
    assert ChangeEvent.from_recorded(event_with(eight).to_recorded()).replay_id == eight
    with pytest.raises(EventFormatError, match=r"integer .*or base64"):
        ChangeEvent.from_recorded(
            {**recorded, "data": {**recorded["data"], "event": {"replayId": 1.5}}}
        )
    with pytest.raises(EventFormatError, match="does not fit in 8 bytes"):
        replay_id_from_int(1 << 64)


def test_cursor_and_ledger_cli_keep_10_byte_ids(tmp_path: Path, capsys) -> None:
    ten = wide(12345)
    cursor = SensorCursor().with_channel(LEADS, ChannelCursor(replay_id=ten))
    assert SensorCursor.from_json(cursor.to_json()).for_channel(LEADS).replay_id == ten
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    b64 = base64.b64encode(ten).decode()
    assert main(["ledger", "upgrade", "--url", url]) == 0
    args = ["ledger", "replay-ids", "set", "--url", url, "--channel", LEADS, "--replay-id", b64]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["ledger", "replay-ids", "show", "--url", url]) == 0
    shown = capsys.readouterr().out
    assert b64 in shown and ten.hex() in shown
    ledger = Ledger.from_url(url)
    try:
        assert ledger.replay_id(LEADS) == ten
    finally:
        ledger.dispose()
