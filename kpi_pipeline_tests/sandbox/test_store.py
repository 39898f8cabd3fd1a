"""SandboxStore: records and the change events Salesforce would publish for each write."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kpi_pipeline.core.events import read_recorded_lines
from kpi_pipeline.sandbox.encoding import encode_change
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER_ID,
    INTEGRATION_USER_ID,
    QUEUE_IDS,
    REP_USER_IDS,
    RecordNotFoundError,
    SandboxStore,
    SandboxStoreError,
    sf_id,
)

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
REP = REP_USER_IDS[0]


class FakeClock:
    """A settable clock (epoch ms) so retention can be tested without waiting 72 hours."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SandboxStore:
    s = SandboxStore(tmp_path / "sandbox.db", clock=clock)
    yield s
    s.close()


LEAD = {
    "FirstName": "Ada",
    "LastName": "Byron",
    "Company": "Engines Ltd",
    "Email": "ada@engines.example",
    "Phone": "+44 20 555 0100",
    "Status": "Open - Not Contacted",
    "OwnerId": QUEUE_IDS[0],
    "Address": {"City": "London", "Country": "United Kingdom"},
}


def all_changes(store: SandboxStore):
    return list(store.iter_changes())


def test_create_publishes_create_with_values_and_audit_fields(store: SandboxStore) -> None:
    lead_id = store.create_record(
        "Lead", LEAD, user_id=INTEGRATION_USER_ID, at_ms=T0, change_origin="o"
    )
    [change] = all_changes(store)
    assert lead_id.startswith("00Q") and len(lead_id) == 18
    assert change.entity == "Lead" and change.replay == 1 and change.commit_timestamp == T0
    header = change.header
    assert header["changeType"] == "CREATE" and header["recordIds"] == [lead_id]
    assert header["commitUser"] == INTEGRATION_USER_ID and header["changeOrigin"] == "o"
    assert header["sequenceNumber"] == 1 and header["changedFields"] == [] == header["nulledFields"]
    assert change.fields["Name"] == {"FirstName": "Ada", "LastName": "Byron"}  # compound, nested
    assert change.fields["CreatedDate"] == T0 == change.fields["LastModifiedDate"]
    assert change.fields["CreatedById"] == INTEGRATION_USER_ID
    record = store.get_record("Lead", lead_id)
    assert record["Company"] == "Engines Ltd" and record["Address"]["City"] == "London"
    assert record["IsDeleted"] is False
    encode_change(change)  # fits the LeadChangeEvent Avro schema


def test_update_carries_only_changed_values_and_names_them(store: SandboxStore) -> None:
    lead_id = store.create_record("Lead", LEAD, user_id=INTEGRATION_USER_ID, at_ms=T0)
    store.update_record(
        "Lead",
        lead_id,
        {
            "Status": "Working - Contacted",
            "Phone": None,
            "Company": "Engines Ltd",
            "FirstName": "Augusta",
        },
        user_id=REP,
        at_ms=T0 + 60_000,
    )
    update = all_changes(store)[-1]
    assert update.header["changeType"] == "UPDATE"
    assert update.header["changedFields"] == [
        "Status",
        "Phone",
        "Name.FirstName",
        "LastModifiedDate",
        "LastModifiedById",
    ]
    assert update.header["nulledFields"] == ["Phone"]
    # unchanged Company and the nulled Phone are absent from the body
    assert update.fields == {
        "Status": "Working - Contacted",
        "Name": {"FirstName": "Augusta"},
        "LastModifiedDate": T0 + 60_000,
        "LastModifiedById": REP,
    }
    record = store.get_record("Lead", lead_id)
    assert record["Phone"] is None and record["Name"] == {
        "FirstName": "Augusta",
        "LastName": "Byron",
    }
    assert record["LastModifiedDate"] == T0 + 60_000 and record["SystemModstamp"] == T0 + 60_000
    encode_change(update)


def test_update_that_changes_nothing_still_stamps_last_modified(store: SandboxStore) -> None:
    lead_id = store.create_record("Lead", LEAD, user_id=REP, at_ms=T0)
    store.update_record("Lead", lead_id, {"Status": LEAD["Status"]}, user_id=REP, at_ms=T0 + 1)
    update = all_changes(store)[-1]
    assert update.header["changedFields"] == ["LastModifiedDate"]
    assert update.fields == {"LastModifiedDate": T0 + 1}


def test_iso_datetimes_are_stored_as_epoch_ms(store: SandboxStore) -> None:
    lead_id = store.create_record("Lead", LEAD, user_id=REP, at_ms=T0)
    store.update_record(
        "Lead",
        lead_id,
        {"First_Response_At__c": "2026-01-05T08:30:00.000Z"},
        user_id=INTEGRATION_USER_ID,
    )
    assert store.get_record("Lead", lead_id)["First_Response_At__c"] == T0 + 30 * 60_000


def test_delete_and_undelete(store: SandboxStore) -> None:
    task_id = store.create_record("Task", {"Subject": "Call", "WhoId": "x"}, user_id=REP, at_ms=T0)
    store.delete_record("Task", task_id, user_id=REP, at_ms=T0 + 5)
    delete = all_changes(store)[-1]
    assert delete.header["changeType"] == "DELETE" and delete.fields == {}
    assert store.get_record("Task", task_id) is None
    assert store.get_record("Task", task_id, include_deleted=True)["IsDeleted"] is True
    assert store.query_records("Task") == []
    with pytest.raises(RecordNotFoundError, match="deleted"):
        store.update_record("Task", task_id, {"Subject": "x"}, user_id=REP)
    store.undelete_record("Task", task_id, user_id=REP, at_ms=T0 + 9)
    undelete = all_changes(store)[-1]
    assert undelete.header["changeType"] == "UNDELETE"
    assert undelete.fields["Subject"] == "Call" and undelete.fields["LastModifiedDate"] == T0 + 9
    assert store.get_record("Task", task_id)["Subject"] == "Call"
    with pytest.raises(RecordNotFoundError, match="recycle bin"):
        store.undelete_record("Task", task_id, user_id=REP)


def test_transaction_shares_key_and_commit_time(store: SandboxStore) -> None:
    with store.transaction(at_ms=T0) as tx:
        task_id = store.create_record(
            "Task", {"Subject": "Email: hi", "TaskSubtype": "Email", "Status": "Completed"},
            user_id=REP, transaction=tx,
        )  # fmt: skip
        store.create_record(
            "EmailMessage", {"Subject": "hi", "Incoming": False, "ActivityId": task_id, "MessageDate": T0},
            user_id=REP, transaction=tx,
        )  # fmt: skip
    task, email = all_changes(store)
    assert task.header["transactionKey"] == email.header["transactionKey"] != ""
    assert (task.header["sequenceNumber"], email.header["sequenceNumber"]) == (1, 2)
    assert task.commit_timestamp == email.commit_timestamp == T0
    assert task.header["commitNumber"] == email.header["commitNumber"]
    # the next transaction gets a different key
    store.create_record("Task", {"Subject": "other"}, user_id=REP, at_ms=T0 + 1)
    assert all_changes(store)[-1].header["transactionKey"] != task.header["transactionKey"]


def test_transaction_is_all_or_nothing(store: SandboxStore) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.transaction(at_ms=T0) as tx:
        store.create_record("Task", {"Subject": "a"}, user_id=REP, transaction=tx)
        raise RuntimeError("boom")
    assert all_changes(store) == [] and store.query_records("Task") == []
    with store.transaction(at_ms=T0) as tx:
        with pytest.raises(SandboxStoreError, match="commit time"):
            store.create_record("Task", {"Subject": "a"}, user_id=REP, transaction=tx, at_ms=T0 + 1)
        task_id = store.create_record("Task", {"Subject": "a"}, user_id=REP, transaction=tx)
        with pytest.raises(SandboxStoreError, match="already changed in this transaction"):
            store.update_record("Task", task_id, {"Subject": "b"}, user_id=REP, transaction=tx)


def test_writer_options_are_checked_like_keyword_arguments(store: SandboxStore) -> None:
    with pytest.raises(TypeError, match="change_orign"):
        store.create_record("Task", {"Subject": "a"}, user_id=REP, change_orign="x")
    with pytest.raises(TypeError, match="user_id required"):
        store.delete_record("Task", "00T000000000001AAA", at_ms=T0)
    assert all_changes(store) == []


def test_ids_are_deterministic_typed_and_case_safe(tmp_path: Path) -> None:
    def ids(name: str) -> list[str]:
        s = SandboxStore(tmp_path / name, clock=lambda: T0)
        out = [s.create_record("Lead", {"LastName": f"L{i}"}, user_id=REP) for i in range(3)]
        out.append(s.create_record("Task", {"Subject": "t"}, user_id=REP))
        out.append(s.create_record("EmailMessage", {"Subject": "e"}, user_id=REP))
        s.close()
        return out

    first = ids("a.db")
    assert first == ids("b.db")
    assert [i[:3] for i in first] == ["00Q", "00Q", "00Q", "00T", "02s"]
    assert len(set(first)) == 5 and all(len(i) == 18 for i in first)
    assert REP.startswith("005") and QUEUE_IDS[0].startswith("00G")
    # 15-char ids differing only in case get different case-safe suffixes
    upper, lower = sf_id("00Q", 10), sf_id("00Q", 36)
    assert upper[:15].lower() == lower[:15].lower() and upper[:15] != lower[:15]
    assert upper.lower() != lower.lower()


def test_seeded_directory(store: SandboxStore) -> None:
    users = {u["Id"]: u for u in store.query_records("User")}
    assert set(REP_USER_IDS) | {INTEGRATION_USER_ID, AUTOMATION_USER_ID} == set(users)
    assert len(REP_USER_IDS) == 8 and all(users[r]["Name"] for r in REP_USER_IDS)
    queues = store.query_records("Group")
    assert [q["Id"] for q in queues] == list(QUEUE_IDS) and {q["Type"] for q in queues} == {"Queue"}
    assert store.latest_replay() == 0  # the directory publishes no change events


def test_bad_writes_name_the_problem(store: SandboxStore) -> None:
    with pytest.raises(SandboxStoreError, match=r"no field 'Colour'.*schemas\.py"):
        store.create_record("Lead", {"Colour": "red"}, user_id=REP)
    with pytest.raises(SandboxStoreError, match="audit field"):
        store.create_record("Lead", {"CreatedDate": T0}, user_id=REP)
    with pytest.raises(SandboxStoreError, match="no sObject 'Opportunity'"):
        store.get_record("Opportunity", "006")
    with pytest.raises(SandboxStoreError, match="no change events"):
        store.create_record("User", {"Name": "x"}, user_id=REP)
    with pytest.raises(SandboxStoreError, match="neither ISO-8601"):
        store.create_record("Task", {"CompletedDateTime": "yesterday"}, user_id=REP)
    with pytest.raises(RecordNotFoundError, match="does not exist"):
        store.update_record("Lead", "00Q000000000000AAA", {"Status": "x"}, user_id=REP)
    assert store.latest_replay() == 0


def test_gap_and_overflow_events(store: SandboxStore) -> None:
    lead_id = store.create_record("Lead", LEAD, user_id=REP, at_ms=T0)
    gap = store.emit_gap(
        "Lead", [lead_id], "UPDATE", values={"Status": "Closed - Not Converted"}, at_ms=T0 + 1
    )
    assert gap.header["changeType"] == "GAP_UPDATE" and gap.header["recordIds"] == [lead_id]
    assert gap.fields == {} and gap.header["changedFields"] == []
    assert (
        store.get_record("Lead", lead_id)["Status"] == "Closed - Not Converted"
    )  # re-read finds it
    store.emit_gap("Lead", [lead_id], "GAP_DELETE", at_ms=T0 + 2)
    assert store.get_record("Lead", lead_id) is None
    overflow = store.emit_overflow("Task", at_ms=T0 + 3)
    assert overflow.header["changeType"] == "GAP_OVERFLOW"
    assert overflow.header["recordIds"] == ["000000000000000AAA"] and overflow.fields == {}
    with pytest.raises(SandboxStoreError, match="gap change type"):
        store.emit_gap("Lead", [lead_id], "SNAPSHOT")
    for change in all_changes(store):
        encode_change(change)


def test_retention_window_and_reads(store: SandboxStore, clock: FakeClock) -> None:
    hour = 3_600_000
    for i in range(4):  # one lead per day
        store.create_record("Lead", {"LastName": f"L{i}"}, user_id=REP, at_ms=T0 + i * 24 * hour)
    task_id = store.create_record("Task", {"Subject": "t"}, user_id=REP, at_ms=T0 + 3 * 24 * hour)
    clock.now = T0 + 3 * 24 * hour + hour  # 73 h after the first change: it has expired
    assert store.earliest_retained_replay(clock.now) == 2
    assert [c.replay for c in store.read_changes(["Lead"], None, 10)] == [2, 3, 4]
    assert [c.replay for c in store.read_changes(["Lead", "Task"], 2, 10)] == [3, 4, 5]
    assert [c.replay for c in store.read_changes(["Lead", "Task"], 0, 2)] == [2, 3]
    assert store.read_changes(["Task"], None, 10)[0].header["recordIds"] == [task_id]
    assert store.latest_replay() == 5
    assert store.prune() == 1 and [c.replay for c in store.iter_changes()] == [2, 3, 4, 5]
    assert store.latest_replay() == 5  # replay ids are never reused
    clock.now += 10 * 24 * hour
    assert (
        store.earliest_retained_replay(clock.now) is None
        and store.read_changes(["Lead"], None, 5) == []
    )


def test_query_records_by_ids_and_modified_since(store: SandboxStore) -> None:
    a = store.create_record("Lead", {"LastName": "A"}, user_id=REP, at_ms=T0)
    b = store.create_record("Lead", {"LastName": "B"}, user_id=REP, at_ms=T0 + 10)
    store.update_record("Lead", a, {"Status": "x"}, user_id=REP, at_ms=T0 + 20)
    assert [r["Id"] for r in store.query_records("Lead", ids=[b, a])] == sorted([a, b])
    assert [r["Id"] for r in store.query_records("Lead", modified_since_ms=T0 + 15)] == [a]
    assert store.query_records("Lead", ids=[]) == []


def test_concurrent_writers_get_increasing_replays(store: SandboxStore) -> None:
    def write(n: int) -> None:
        for i in range(25):
            store.create_record("Task", {"Subject": f"{n}-{i}"}, user_id=REP, at_ms=T0)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    changes = all_changes(store)
    assert [c.replay for c in changes] == list(range(1, 101))
    assert (
        len({c.header["recordIds"][0] for c in changes}) == 100 == len(store.query_records("Task"))
    )


def test_second_process_sees_and_wakes_on_writes(store: SandboxStore, tmp_path: Path) -> None:
    store.create_record("Lead", {"LastName": "mine"}, user_id=REP, at_ms=T0)
    writer = textwrap.dedent(
        f"""
        import time
        from kpi_pipeline.sandbox.store import SandboxStore
        s = SandboxStore({str(store.path)!r}, clock=lambda: {T0})
        assert s.query_records("Lead")[0]["Name"] == {{"LastName": "mine"}}
        time.sleep(0.5)
        s.create_record("Lead", {{"LastName": "theirs"}}, user_id={REP!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer])
    try:
        started = time.monotonic()
        assert store.wait_for_changes(1, timeout=20)
        waited = time.monotonic() - started
    finally:
        assert proc.wait(timeout=20) == 0
    assert waited < 15
    assert [c.fields["Name"]["LastName"] for c in store.read_changes(["Lead"], None, 5)] == [
        "mine",
        "theirs",
    ]
    assert not store.wait_for_changes(2, timeout=0.1)


def test_wait_for_changes_wakes_for_writes_in_this_process(store: SandboxStore) -> None:
    timer = threading.Timer(0.2, lambda: store.create_record("Task", {"Subject": "t"}, user_id=REP))
    timer.start()
    try:
        assert store.wait_for_changes(0, timeout=10)
    finally:
        timer.join()


def test_export_recorded_round_trips(store: SandboxStore, tmp_path: Path) -> None:
    lead_id = store.create_record("Lead", LEAD, user_id=REP, at_ms=T0)
    store.update_record("Lead", lead_id, {"Phone": None}, user_id=REP, at_ms=T0 + 1)
    store.create_record(
        "Task",
        {"Subject": "t", "CompletedDateTime": T0 + 2, "WhoId": lead_id},
        user_id=REP,
        at_ms=T0 + 2,
    )
    out = tmp_path / "events.jsonl"
    assert store.export_recorded(out, iso_datetimes=True) == 3
    events = list(read_recorded_lines(out.read_text().splitlines(), source=str(out)))
    assert [e.channel for e in events] == ["/data/LeadChangeEvent"] * 2 + ["/data/TaskChangeEvent"]
    assert [e.replay_int for e in events] == [1, 2, 3]
    assert events[1].header.nulled_fields == ("Phone",) and events[1].fields["Phone"] is None
    assert events[2].datetime_field("CompletedDateTime").timestamp() * 1000 == T0 + 2
    assert events[0].fields["Name"] == {"FirstName": "Ada", "LastName": "Byron"}
    assert events[0].schema_id  # the schema id the Pub/Sub server serves
    custom = tmp_path / "custom.jsonl"
    store.export_recorded(custom, channel_for_entity="/data/SalesKpis__chn")
    assert {e.channel for e in read_recorded_lines(custom.read_text().splitlines())} == {
        "/data/SalesKpis__chn"
    }
