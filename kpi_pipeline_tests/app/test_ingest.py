"""drain_tick through its PubSubFetcher port: an in-memory fetcher (a list of events per channel,
and the calls it received) in front of a real ledger (SQLite file).

What drain_tick promises (kpi_pipeline/app/ingest.py): fetch a bounded batch after the
cursor's replay id, stage it durably, and only then hand back the advanced cursor and the
batch to run; a batch staged by a tick whose cursor was never committed is found again instead
of fetched again; a refused replay id records a re-sync window and restarts from a preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.ingest import DrainLimits, TickOutcome, drain_tick
from kpi_pipeline.core.cursor import ChannelCursor, SensorCursor
from kpi_pipeline.core.errors import ReplayIdInvalidError
from kpi_pipeline.core.events import ChangeEvent, replay_id_from_int, replay_id_hex
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline_tests.support.events import MINUTE, T0, event, lead_created

LEADS = "/data/LeadChangeEvent"
SCHEMA_ID = "lead-schema-1"


def raw(n: int, *, change_type: str = "CREATE") -> RawEvent:
    """The n-th Lead change on the channel (replay id n, committed n minutes after T0). The
    payload is the recorded JSON form, which ``decode`` below reads back."""
    lead_id = f"00Q{n:015d}"
    at_ms = T0 + n * MINUTE
    if change_type == "CREATE":
        change = lead_created(lead_id, at_ms, replay=n)
    else:
        change = event("Lead", lead_id, change_type, at_ms, replay=n, Status="Working")
    payload = json.dumps(change.to_recorded()).encode()
    return RawEvent(LEADS, replay_id_from_int(n), SCHEMA_ID, payload, f"uuid-{n}")


def decode(event_: RawEvent) -> ChangeEvent:
    return ChangeEvent.from_recorded(json.loads(event_.payload))


@dataclass
class Fetched:
    events: list[RawEvent]
    latest_replay_id: bytes | None


@dataclass
class InMemoryFetcher:
    """PubSubFetcher over a fixed list of events per channel, as the Pub/Sub API serves them:
    after a CUSTOM replay id, or from EARLIEST / LATEST; at most ``max_events`` per fetch."""

    log: dict[str, list[RawEvent]]
    refused: set[bytes] = field(default_factory=set)  # replay ids answered as invalid
    keepalive: bool = False  # an empty fetch reports the newest replay id, as a keepalive does
    failure: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def fetch(
        self, channel: str, *, replay_id: bytes | None, preset: str, max_events: int, **_timing
    ) -> Fetched:
        """The fake answers at once, so the port's time limits (``max_seconds``,
        ``idle_return_s``) have nothing to bound."""
        self.calls.append(
            {"channel": channel, "replay_id": replay_id, "preset": preset, "max": max_events}
        )
        if self.failure is not None:
            raise self.failure
        events = self.log.get(channel, [])
        if preset == "CUSTOM":
            if replay_id in self.refused:
                raise ReplayIdInvalidError(
                    f"replay id {replay_id!r} is outside the retention window"
                )
            start = next(i + 1 for i, e in enumerate(events) if e.replay_id == replay_id)
        else:
            start = len(events) if preset == "LATEST" else 0
        batch = events[start : start + max_events]
        latest = events[-1].replay_id if (self.keepalive and events) else None
        return Fetched(batch, latest if not batch else None)

    def get_schema(self, schema_id: str) -> str:
        return json.dumps({"type": "record", "name": schema_id, "fields": []})


def tick(
    fetcher: InMemoryFetcher,
    ledger: Ledger,
    cursor: SensorCursor | None = None,
    *,
    max_events: int = 100,
    on_invalid_replay: str = "EARLIEST",
) -> TickOutcome:
    return drain_tick(
        channels=[LEADS],
        cursor=cursor or SensorCursor(),
        fetcher=fetcher,
        ledger=ledger,
        decode=decode,
        limits=DrainLimits(
            max_events=max_events, max_seconds=5.0, on_invalid_replay=on_invalid_replay
        ),
        now=lambda: (T0 + 60 * MINUTE) / 1000,
        is_invalid_replay=lambda exc: isinstance(exc, ReplayIdInvalidError),
    )


def staged_replays(ledger: Ledger, batch_id: str) -> list[bytes]:
    return [e.replay_id for e in ledger.load_batch(batch_id).events]


@pytest.fixture
def ledger(new_ledger) -> Ledger:
    """A fresh SQLite ledger (the ledger adapter itself is tested on PostgreSQL too)."""
    return new_ledger()


def test_events_are_staged_and_the_cursor_moves_to_the_last_replay_id(ledger: Ledger) -> None:
    fetcher = InMemoryFetcher({LEADS: [raw(1), raw(2), raw(3, change_type="UPDATE")]})
    outcome = tick(fetcher, ledger)

    assert fetcher.calls == [
        {"channel": LEADS, "replay_id": None, "preset": "EARLIEST", "max": 100}
    ]
    (batch,) = outcome.batches
    assert (batch.event_count, batch.restaged) == (3, False)
    assert batch.first_replay_hex == replay_id_hex(replay_id_from_int(1))
    assert batch.last_replay_hex == replay_id_hex(replay_id_from_int(3))
    assert staged_replays(ledger, batch.batch_id) == [replay_id_from_int(n) for n in (1, 2, 3)]
    assert outcome.cursor.for_channel(LEADS) == ChannelCursor(
        replay_id_from_int(3), batch.batch_id, T0 + 3 * MINUTE
    )
    (report,) = outcome.reports
    assert report.by_change_type == {"CREATE": 2, "UPDATE": 1}
    assert report.lag_seconds == 57 * 60  # now is T0 + 60 min, the newest commit T0 + 3 min
    assert report.caught_up is True

    # The next tick resumes after the cursor's replay id, and finds nothing new.
    again = tick(fetcher, ledger, outcome.cursor)
    assert fetcher.calls[-1]["preset"] == "CUSTOM"
    assert fetcher.calls[-1]["replay_id"] == replay_id_from_int(3)
    assert again.batches == []
    assert again.cursor == outcome.cursor


def test_an_empty_fetch_stages_nothing_and_leaves_the_cursor(ledger: Ledger) -> None:
    outcome = tick(InMemoryFetcher({}), ledger)
    assert outcome.batches == []
    assert outcome.cursor == SensorCursor({LEADS: ChannelCursor()})
    (report,) = outcome.reports
    assert (report.events, report.replay_id_hex, report.caught_up) == (0, None, False)
    assert ledger.pending_batches() == []


def test_a_keepalive_moves_the_cursor_to_its_replay_id_without_a_batch(ledger: Ledger) -> None:
    served = [raw(1), raw(2)]
    fetcher = InMemoryFetcher({LEADS: served}, keepalive=True)
    first = tick(fetcher, ledger)
    done = first.batches[0].batch_id
    ledger.mark_batch_done(done, run_id="run-1", summary={})

    quiet = tick(fetcher, ledger, first.cursor)  # nothing after replay id 2: a keepalive
    assert quiet.batches == []
    assert quiet.cursor.for_channel(LEADS).replay_id == replay_id_from_int(2)
    assert quiet.cursor.for_channel(LEADS).batch_id == done  # a keepalive names no batch
    assert quiet.reports[0].caught_up is True
    assert quiet.reports[0].lag_seconds == 0.0


def test_a_bounded_drain_stops_at_its_bound_and_the_next_tick_goes_on(ledger: Ledger) -> None:
    fetcher = InMemoryFetcher({LEADS: [raw(n) for n in range(1, 6)]})
    cursor = SensorCursor()
    batches = []
    for expected_last, expected_caught_up in ((2, False), (4, False), (5, True)):
        outcome = tick(fetcher, ledger, cursor, max_events=2)
        assert fetcher.calls[-1]["max"] == 2
        (batch,) = outcome.batches
        assert batch.last_replay_hex == replay_id_hex(replay_id_from_int(expected_last))
        assert outcome.cursor.for_channel(LEADS).replay_id == replay_id_from_int(expected_last)
        assert outcome.reports[0].caught_up is expected_caught_up
        ledger.mark_batch_done(batch.batch_id, run_id=f"run-{expected_last}", summary={})
        batches.append(batch.batch_id)
        cursor = outcome.cursor
    staged = [r for batch_id in batches for r in staged_replays(ledger, batch_id)]
    assert staged == [replay_id_from_int(n) for n in range(1, 6)]  # each once, in order


def test_a_refused_replay_id_records_a_resync_window_and_restarts_from_the_preset(
    ledger: Ledger,
) -> None:
    expired = replay_id_from_int(999)
    fetcher = InMemoryFetcher({LEADS: [raw(1), raw(2)]}, refused={expired})
    cursor = SensorCursor({LEADS: ChannelCursor(expired, "old-batch", T0)})

    outcome = tick(fetcher, ledger, cursor, on_invalid_replay="EARLIEST")

    assert [c["preset"] for c in fetcher.calls] == ["CUSTOM", "EARLIEST"]
    (window,) = ledger.open_resync_windows(LEADS)
    assert window.reason == "replay_id_invalid"
    assert outcome.reports[0].resync_window_id == window.id
    (batch,) = outcome.batches
    assert staged_replays(ledger, batch.batch_id) == [replay_id_from_int(1), replay_id_from_int(2)]
    # Restarted from the preset: the batch was fetched after no replay id, not after the refused one.
    assert ledger.find_batch_after(LEADS, "").batch_id == batch.batch_id
    assert outcome.cursor.for_channel(LEADS).replay_id == replay_id_from_int(2)

    # Refused again on a later tick (same starting point): still one window.
    tick(
        InMemoryFetcher({LEADS: []}, refused={expired}), ledger, cursor, on_invalid_replay="LATEST"
    )
    assert len(ledger.open_resync_windows(LEADS)) == 1


def test_any_other_fetch_error_propagates_and_changes_nothing(ledger: Ledger) -> None:
    fetcher = InMemoryFetcher({LEADS: [raw(1)]}, failure=ConnectionError("stream reset"))
    with pytest.raises(ConnectionError, match="stream reset"):
        tick(fetcher, ledger)
    assert ledger.pending_batches() == []
    assert ledger.open_resync_windows() == []


def test_a_tick_whose_cursor_was_lost_finds_its_batch_instead_of_fetching_again(
    ledger: Ledger,
) -> None:
    fetcher = InMemoryFetcher({LEADS: [raw(1), raw(2)]})
    first = tick(fetcher, ledger)  # staged; then the process dies before the cursor is committed

    retried = tick(fetcher, ledger, SensorCursor())
    assert len(fetcher.calls) == 1  # not fetched again
    (batch,) = retried.batches
    assert batch.batch_id == first.batches[0].batch_id
    assert batch.restaged is True
    assert retried.cursor.for_channel(LEADS).replay_id == replay_id_from_int(2)
    assert [b.batch_id for b in ledger.pending_batches()] == [batch.batch_id]


def test_the_same_events_fetched_twice_are_staged_once(ledger: Ledger) -> None:
    fetcher = InMemoryFetcher({LEADS: [raw(1), raw(2), raw(3)]})
    first = tick(fetcher, ledger)
    (batch,) = first.batches
    ledger.mark_batch_done(batch.batch_id, run_id="run-1", summary={})

    # The cursor was reset: the same events come again from EARLIEST. Same batch id (the run
    # key Dagster dedups on), marked restaged, and nothing staged a second time.
    again = tick(fetcher, ledger, SensorCursor())
    (same,) = again.batches
    assert (same.batch_id, same.restaged) == (batch.batch_id, True)
    assert staged_replays(ledger, batch.batch_id) == [replay_id_from_int(n) for n in (1, 2, 3)]
    assert ledger.pending_batches() == []

    # A fetch overlapping what is staged (events 2 and 3 again): nothing new to run, and the
    # cursor moves past them.
    overlapping = InMemoryFetcher({LEADS: [raw(2), raw(3)]})
    moved = tick(overlapping, ledger, SensorCursor())
    assert moved.batches == []
    assert moved.reports[0].events == 0
    assert moved.cursor.for_channel(LEADS).replay_id == replay_id_from_int(3)
    assert ledger.pending_batches() == []
