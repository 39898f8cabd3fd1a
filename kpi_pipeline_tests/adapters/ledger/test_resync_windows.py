"""LedgerResyncWindows, the re-sync's port over the ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect
from typing import Any

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger.resync_windows import LedgerResyncWindows
from kpi_pipeline.app.resync.ports import ResyncLedger
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.core.resync_windows import WINDOW_OPEN, ResyncWindow
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline_tests.support.resync_pipeline import gap_window

LEAD = "/data/LeadChangeEvent"


def _window(ledger: Ledger, start_ms: int, **detail: Any) -> int:
    return gap_window(ledger, from_replay=start_ms, at_ms=start_ms, detail=detail)


def _bump(detail: dict[str, Any]) -> dict[str, Any]:
    detail["attempts"] = int(detail.get("attempts") or 0) + 1
    return detail


def test_it_has_every_method_of_the_port_with_the_same_parameters() -> None:
    port_methods = {
        name
        for cls in ResyncLedger.__mro__
        if cls.__module__ == ResyncLedger.__module__
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("_")
    }
    assert port_methods == {
        "open_resync_windows",
        "close_resync_window",
        "update_open_resync_window",
        "record_states",
        "staged_schemas",
    }
    for name in port_methods:
        ours = inspect.signature(getattr(LedgerResyncWindows, name)).parameters
        theirs = inspect.signature(getattr(ResyncLedger, name)).parameters
        assert list(theirs) == [p for p in ours if p in theirs], name
        # Our extra parameters (a channel filter) are optional.
        assert all(ours[p].default is not inspect.Parameter.empty for p in ours if p not in theirs)


def test_open_windows_come_as_core_values_oldest_first(ledger: Ledger) -> None:
    windows = LedgerResyncWindows(ledger)
    first, second = _window(ledger, 1000, entity="Lead"), _window(ledger, 2000)
    found = windows.open_resync_windows()
    assert [w.id for w in found] == [first, second]
    assert all(type(w) is ResyncWindow for w in found)
    assert (found[0].status, found[0].detail, found[0].from_time_ms) == (
        WINDOW_OPEN,
        {"entity": "Lead"},
        1000,
    )
    assert found == ledger.open_resync_windows()  # the ledger returns the core value itself


def test_update_changes_an_open_window_only(ledger: Ledger) -> None:
    windows = LedgerResyncWindows(ledger)
    window_id = _window(ledger, 1000, entity="Lead")
    assert windows.update_open_resync_window(window_id, _bump) is True
    assert windows.update_open_resync_window(window_id, _bump) is True
    [window] = windows.open_resync_windows()
    assert window.detail == {"entity": "Lead", "attempts": 2}

    assert windows.close_resync_window(window_id, detail={"resync": "done"}) is True
    assert windows.close_resync_window(window_id, detail={}) is False  # closed already
    called: list[dict[str, Any]] = []
    assert windows.update_open_resync_window(window_id, lambda d: called.append(d) or d) is False
    assert windows.update_open_resync_window(99_999, lambda d: called.append(d) or d) is False
    assert called == []  # a closed or unknown window's detail is never handed out
    [closed] = ledger.resync_windows(status="closed")
    assert closed.detail == {"entity": "Lead", "attempts": 2, "resync": "done"}


def test_record_states_and_staged_schemas_are_the_ledgers(ledger: Ledger) -> None:
    windows = LedgerResyncWindows(ledger)
    state = RecordState("Lead", "00Q000000000001AAA", {"LastName": "A"}, created_ms=1000)
    with ledger.write() as conn:
        ledger.save_records(conn, [state])
    keys = [("Lead", "00Q000000000001AAA"), ("Lead", "00Q000000000002AAA")]
    found = windows.record_states(keys)
    assert list(found) == [("Lead", "00Q000000000001AAA")]  # an unknown record is absent
    assert found[keys[0]].fields == {"LastName": "A"}

    schema = '{"type": "record", "name": "LeadChangeEvent", "fields": []}'
    event = RawEvent(LEAD, replay_id_from_int(1), "schemaA", b"avro", "uuid-1")
    ledger.stage_batch(LEAD, [event], {"schemaA": schema})
    assert windows.staged_schemas() == ledger.staged_schemas() == [("schemaA", schema)]
    assert windows.staged_schemas("/data/TaskChangeEvent") == []
