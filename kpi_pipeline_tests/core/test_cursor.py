import json

import pytest

from kpi_pipeline.core.cursor import ChannelCursor, CursorError, SensorCursor
from kpi_pipeline.core.events import replay_id_from_int


def test_round_trip_keeps_opaque_replay_bytes():
    odd_bytes = b"\x00\xff\x10not-a-number"
    cursor = SensorCursor().with_channel(
        "/data/LeadChangeEvent", ChannelCursor(odd_bytes, batch_id="b1", commit_ms=1700000000000)
    )
    restored = SensorCursor.from_json(cursor.to_json())
    assert restored.for_channel("/data/LeadChangeEvent") == ChannelCursor(
        odd_bytes, "b1", 1700000000000
    )
    assert restored.for_channel("/data/TaskChangeEvent") == ChannelCursor()


def test_empty_cursor_starts_every_channel_fresh():
    assert SensorCursor.from_json(None).channels == {}
    assert SensorCursor.from_json("").channels == {}


def test_json_is_stable_and_sorted():
    a = SensorCursor().with_channel("/data/B", ChannelCursor(replay_id_from_int(2)))
    a = a.with_channel("/data/A", ChannelCursor(replay_id_from_int(1)))
    assert list(json.loads(a.to_json())["channels"]) == ["/data/A", "/data/B"]


@pytest.mark.parametrize(
    "bad",
    ["{", '{"v": 99, "channels": {}}', '{"v": 1, "channels": {"/data/X": {"replay_id": "%%%"}}}'],
)
def test_unreadable_cursor_names_the_reset_command(bad):
    with pytest.raises(CursorError, match="dagster sensor cursor cdc_sensor --delete"):
        SensorCursor.from_json(bad)


def test_advance_after_keepalive_keeps_last_batch_and_commit():
    start = ChannelCursor(replay_id_from_int(5), batch_id="b5", commit_ms=10)
    after = start.advanced(replay_id_from_int(9), batch_id=None, commit_ms=None)
    assert after == ChannelCursor(replay_id_from_int(9), "b5", 10)
