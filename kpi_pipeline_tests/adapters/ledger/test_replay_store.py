"""The replay store on SQLite and PostgreSQL: staging and advancing in one transaction,
compare-and-set per stream session, operator set/reset, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger, LedgerError, ReplayPositionMoved
from kpi_pipeline.cli.main import main
from kpi_pipeline.core.events import replay_id_from_int, replay_id_to_b64
from kpi_pipeline.core.raw import RawEvent

LEADS = "/data/LeadChangeEvent"
TASKS = "/data/TaskChangeEvent"
SCHEMAS = {"s1": '{"type": "record", "name": "X", "fields": []}'}


def rid(n: int) -> bytes:
    return replay_id_from_int(n)


def events(*replays: int, channel: str = LEADS) -> list[RawEvent]:
    return [RawEvent(channel, rid(n), "s1", b"payload-%d" % n, f"e{n}") for n in replays]


def inbox_replays(ledger: Ledger, channel: str = LEADS) -> list[int]:
    replays = []
    for batch in ledger.pending_batches(channel):
        replays += [
            int.from_bytes(e.replay_id, "big") for e in ledger.load_batch(batch.batch_id).events
        ]
    return sorted(replays)


def test_an_empty_store_has_no_positions(ledger: Ledger) -> None:
    assert ledger.replay_id(LEADS) is None
    assert ledger.replay_positions() == []


def test_staging_a_response_advances_the_replay_id_with_it(ledger: Ledger) -> None:
    first = ledger.stage_and_advance(
        LEADS, events(1, 2, 3), SCHEMAS, replay_id=rid(3), expected=None, commit_ms=1000
    )
    assert (first.staged, first.replay_id) == (3, rid(3))
    assert ledger.batch(first.batch_id).after_replay == ""
    second = ledger.stage_and_advance(
        LEADS, events(4, 5), SCHEMAS, replay_id=rid(5), expected=rid(3), commit_ms=2000
    )
    assert ledger.batch(second.batch_id).after_replay == rid(3).hex()
    assert inbox_replays(ledger) == [1, 2, 3, 4, 5]
    [position] = ledger.replay_positions()
    assert (position.channel, position.replay_id, position.commit_ms) == (LEADS, rid(5), 2000)
    assert position.updated_by == "stream"


def test_a_keepalive_advances_without_a_batch(ledger: Ledger) -> None:
    ledger.stage_and_advance(
        LEADS, events(1), SCHEMAS, replay_id=rid(1), expected=None, commit_ms=7
    )
    keepalive = ledger.stage_and_advance(LEADS, [], {}, replay_id=rid(9), expected=rid(1))
    assert (keepalive.batch_id, keepalive.staged) == (None, 0)
    assert ledger.replay_id(LEADS) == rid(9)
    assert ledger.replay_positions()[0].commit_ms == 7  # a keepalive carries no commit time
    assert len(ledger.pending_batches(LEADS)) == 1


def test_a_failed_stage_leaves_the_replay_id_where_it_was(ledger: Ledger) -> None:
    ledger.stage_and_advance(LEADS, events(1), SCHEMAS, replay_id=rid(1), expected=None)
    unknown_schema = [RawEvent(LEADS, rid(2), "s2", b"payload", "e2")]
    with pytest.raises(LedgerError, match="no schema JSON"):
        ledger.stage_and_advance(LEADS, unknown_schema, {}, replay_id=rid(2), expected=rid(1))
    assert ledger.replay_id(LEADS) == rid(1)
    assert inbox_replays(ledger) == [1]


def test_an_advance_from_a_stale_position_is_refused_and_stages_nothing(
    ledger: Ledger, ledger_url: str
) -> None:
    ledger.stage_and_advance(LEADS, events(1), SCHEMAS, replay_id=rid(1), expected=None)
    other_process = Ledger.from_url(ledger_url)  # its own engine and connections
    try:
        other_process.stage_and_advance(
            LEADS, events(2), SCHEMAS, replay_id=rid(2), expected=rid(1)
        )
        with pytest.raises(ReplayPositionMoved, match="another process or an operator") as info:
            ledger.stage_and_advance(
                LEADS, events(2, 3), SCHEMAS, replay_id=rid(3), expected=rid(1)
            )
        assert (info.value.expected, info.value.found) == (rid(1), rid(2))
        with pytest.raises(ReplayPositionMoved):
            other_process.stage_and_advance(TASKS, [], {}, replay_id=rid(5), expected=rid(4))
    finally:
        other_process.dispose()
    assert ledger.replay_id(LEADS) == rid(2)
    assert inbox_replays(ledger) == [1, 2]
    assert ledger.replay_id(TASKS) is None


def test_two_sessions_starting_from_the_preset_cannot_both_advance(ledger: Ledger) -> None:
    ledger.stage_and_advance(LEADS, [], {}, replay_id=rid(4), expected=None)
    with pytest.raises(ReplayPositionMoved, match="not none"):
        ledger.stage_and_advance(LEADS, [], {}, replay_id=rid(5), expected=None)
    assert ledger.replay_id(LEADS) == rid(4)


def test_the_operator_sets_and_resets_positions(ledger: Ledger) -> None:
    ledger.stage_and_advance(LEADS, events(1, 2, 3), SCHEMAS, replay_id=rid(3), expected=None)
    ledger.set_replay_id(LEADS, rid(1))  # backwards: events 2 and 3 will be delivered again
    assert ledger.replay_positions()[0].updated_by == "operator"
    with pytest.raises(ReplayPositionMoved):
        ledger.stage_and_advance(LEADS, [], {}, replay_id=rid(4), expected=rid(3))
    again = ledger.stage_and_advance(
        LEADS, events(2, 3), SCHEMAS, replay_id=rid(3), expected=rid(1)
    )
    assert again.staged == 0 and inbox_replays(ledger) == [1, 2, 3]  # staging de-duplicates
    assert ledger.replay_id(LEADS) == rid(3)
    assert ledger.reset_replay_id(LEADS) is True
    assert ledger.reset_replay_id(LEADS) is False
    assert ledger.replay_id(LEADS) is None
    with pytest.raises(ValueError, match="reset_replay_id"):
        ledger.set_replay_id(LEADS, b"")


def test_cli_shows_sets_and_resets_replay_ids(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.from_url(url)
    ledger.stage_and_advance(
        LEADS, events(1), SCHEMAS, replay_id=rid(1), expected=None, commit_ms=5
    )
    ledger.dispose()

    assert main(["ledger", "replay-ids", "show", "--url", url]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["channel"], row["replay_id"], row["commit_ms"]) == (
        LEADS,
        replay_id_to_b64(rid(1)),
        5,
    )
    assert row["updated_by"] == "stream"

    b64 = replay_id_to_b64(rid(123))
    assert (
        main(["ledger", "replay-ids", "set", "--channel", TASKS, "--replay-id", b64, "--url", url])
        == 0
    )
    row = json.loads(capsys.readouterr().out)
    assert (row["channel"], row["replay_id"], row["replay_hex"]) == (TASKS, b64, rid(123).hex())
    assert row["updated_by"] == "operator"

    assert main(["ledger", "replay-ids", "reset", "--channel", LEADS, "--url", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"channel": LEADS, "reset": True}
    assert main(["ledger", "replay-ids", "show", "--url", url]) == 0
    assert [json.loads(line)["channel"] for line in capsys.readouterr().out.splitlines()] == [TASKS]


@pytest.mark.parametrize("bad", ["not base64!", ""])
def test_cli_refuses_a_bad_replay_id_naming_it_and_the_fix(
    tmp_path: Path, capsys, bad: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    argv = ["ledger", "replay-ids", "set", "--channel", LEADS, "--replay-id", bad, "--url", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--replay-id {bad!r}" in err and "replay-ids show" in err
    assert Ledger.from_url(url).replay_id(LEADS) is None
