"""The sales-activity simulator: deterministic, and shaped like real inbound lead handling."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kpi_pipeline.sandbox.encoding import encode_change
from kpi_pipeline.sandbox.simulator import TEMPLATE_CATALOG, LiveSimulator, simulate
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER_ID,
    INTEGRATION_USER_ID,
    QUEUE_IDS,
    REP_USER_IDS,
    SandboxStore,
)

DAY = 86_400_000
MONDAY = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
LEADS, DAYS = 600, 10.0  # two working weeks around one weekend (Jan 10-11)


def change_log(store: SandboxStore) -> list[tuple]:
    return [
        (c.replay, c.entity, c.header, c.fields, c.commit_timestamp) for c in store.iter_changes()
    ]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("sim") / "sandbox.db"
    store = SandboxStore(path, clock=lambda: MONDAY + 30 * DAY)
    summary = simulate(store, leads=LEADS, days=DAYS, seed=11, start_ms=MONDAY)
    yield store, summary, list(store.iter_changes())
    store.close()


def test_same_seed_same_change_log(tmp_path: Path) -> None:
    logs = []
    for name, seed in (("a.db", 5), ("b.db", 5), ("c.db", 6)):
        store = SandboxStore(tmp_path / name, clock=lambda: MONDAY)
        simulate(store, leads=120, days=3, seed=seed, start_ms=MONDAY)
        logs.append(change_log(store))
        store.close()
    assert logs[0] == logs[1] and len(logs[0]) > 400
    assert logs[0] != logs[2]


def test_default_window_ends_now_inside_retention(tmp_path: Path) -> None:
    now = MONDAY + 3 * DAY
    store = SandboxStore(tmp_path / "s.db", clock=lambda: now)
    summary = simulate(store, leads=50, days=2, seed=1)
    assert summary.end_ms == now and summary.start_ms == now - 2 * DAY
    changes = list(store.iter_changes())
    assert all(summary.start_ms <= c.commit_timestamp < now for c in changes)
    assert store.earliest_retained_replay(now) == 1  # all of it is retained
    store.close()


def test_summary_and_log_agree(history) -> None:
    _, summary, changes = history
    assert (
        summary.leads
        == LEADS
        == sum(1 for c in changes if c.entity == "Lead" and c.header["changeType"] == "CREATE")
    )
    assert summary.changes == len(changes) == summary.last_replay
    times = [c.commit_timestamp for c in changes]
    assert times == sorted(times)  # replay order is commit order
    assert times[0] >= MONDAY and times[-1] < MONDAY + DAYS * DAY


def test_every_change_fits_the_avro_schemas(history) -> None:
    _, _, changes = history
    for change in changes:
        encode_change(change)


def first_responses(store: SandboxStore, changes) -> dict[str, int]:
    """Lead id -> time of its first rep response, by the KPI rule of CONTRACTS.md §4."""
    first: dict[str, int] = {}
    for c in changes:
        if c.header["commitUser"] not in REP_USER_IDS:
            continue
        if c.entity == "Task" and c.fields.get("Status") == "Completed":
            task = store.get_record("Task", c.header["recordIds"][0], include_deleted=True)
            first.setdefault(task["WhoId"], c.fields["CompletedDateTime"])
        if (
            c.entity == "EmailMessage"
            and c.header["changeType"] == "CREATE"
            and c.fields["Incoming"] is False
        ):
            first.setdefault(c.fields["RelatedToId"], c.fields["MessageDate"])
    return first


def test_response_delays_and_unanswered_share(history) -> None:
    store, summary, changes = history
    created = {
        c.header["recordIds"][0]: c.commit_timestamp
        for c in changes
        if c.entity == "Lead" and c.header["changeType"] == "CREATE"
    }
    first = first_responses(store, changes)
    # leads from the first four days have had six days to be answered
    early = [lead for lead, at in created.items() if at < MONDAY + 4 * DAY]
    unanswered = sum(1 for lead in early if lead not in first) / len(early)
    assert 0.12 <= unanswered <= 0.32, unanswered
    assert 0.15 <= summary.leads_never_answered / LEADS <= 0.27
    delays_min = sorted((first[lead] - created[lead]) / 60_000 for lead in created if lead in first)
    assert all(d >= 0 for d in delays_min)
    assert 10 <= statistics.median(delays_min) <= 180  # tens of minutes
    assert delays_min[int(0.9 * len(delays_min))] > 6 * 60  # a long tail (nights, weekends)
    assert delays_min[-1] > 2 * 24 * 60  # some take days


def test_email_send_is_task_plus_email_in_one_transaction(history) -> None:
    _, _, changes = history
    by_tx = defaultdict(list)
    for c in changes:
        by_tx[c.header["transactionKey"]].append(c)
    outbound = [
        c
        for c in changes
        if c.entity == "EmailMessage"
        and c.header["changeType"] == "CREATE"
        and not c.fields["Incoming"]
    ]
    assert len(outbound) > 100
    template_ids = {t.id for t in TEMPLATE_CATALOG}
    for email in outbound:
        tx = by_tx[email.header["transactionKey"]]
        assert [c.entity for c in tx] == ["Task", "EmailMessage"]
        task = tx[0]
        assert [c.header["sequenceNumber"] for c in tx] == [1, 2]
        assert task.commit_timestamp == email.commit_timestamp == email.fields["MessageDate"]
        assert task.fields["CompletedDateTime"] == email.fields["MessageDate"]
        assert task.fields["TaskSubtype"] == "Email" and task.fields["Status"] == "Completed"
        assert email.fields["ActivityId"] == task.header["recordIds"][0]
        assert email.fields["RelatedToId"] == task.fields["WhoId"]
        assert email.fields.get("EmailTemplateId", next(iter(template_ids))) in template_ids
    assert sum(1 for e in outbound if "EmailTemplateId" in e.fields) > len(outbound) / 2


def test_calls_are_logged_open_then_completed(history) -> None:
    _, summary, changes = history
    opened = {
        c.header["recordIds"][0]
        for c in changes
        if c.entity == "Task"
        and c.header["changeType"] == "CREATE"
        and c.fields.get("Status") == "Not Started"
    }
    completions = [
        c
        for c in changes
        if c.entity == "Task"
        and c.header["changeType"] == "UPDATE"
        and c.fields.get("Status") == "Completed"
    ]
    assert summary.responses["call"] > 50 and len(completions) >= summary.responses["call"]
    for c in completions:
        assert c.header["recordIds"][0] in opened
        assert {"Status", "IsClosed", "CompletedDateTime", "LastModifiedDate"} <= set(
            c.header["changedFields"]
        )
        assert c.fields["CompletedDateTime"] == c.commit_timestamp and c.fields["IsClosed"] is True


def test_noise_the_pipeline_must_ignore_is_present(history) -> None:
    _, summary, changes = history
    emails = [
        c for c in changes if c.entity == "EmailMessage" and c.header["changeType"] == "CREATE"
    ]
    automation = [e for e in emails if e.fields["CreatedById"] == AUTOMATION_USER_ID]
    assert len(automation) == summary.automation_emails > 50
    assert all(e.fields["Incoming"] is False for e in automation)
    inbound = [e for e in emails if e.fields["Incoming"] is True]
    assert len(inbound) == summary.inbound_emails > 10
    kinds = Counter((c.entity, c.header["changeType"]) for c in changes)
    assert kinds[("Lead", "DELETE")] == summary.lead_deletes > 0
    assert kinds[("Lead", "UPDATE")] > LEADS / 2  # accepts from queues and status changes
    assert any(c.header["nulledFields"] == ["Phone"] for c in changes if c.entity == "Lead")


def test_lead_owners_need_routing_or_belong_to_reps(history) -> None:
    _, _, changes = history
    owners = Counter()
    for c in changes:
        if c.entity == "Lead" and c.header["changeType"] == "CREATE":
            owner = c.fields["OwnerId"]
            owners[
                "queue"
                if owner in QUEUE_IDS
                else "integration"
                if owner == INTEGRATION_USER_ID
                else "rep"
                if owner in REP_USER_IDS
                else owner
            ] += 1
    assert set(owners) == {"queue", "integration", "rep"}
    assert (
        owners["queue"] / LEADS > 0.3
        and owners["integration"] / LEADS > 0.1
        and owners["rep"] / LEADS > 0.05
    )


def test_arrivals_follow_business_hours_and_weekdays(history) -> None:
    _, _, changes = history
    per_hour, weekend = Counter(), 0
    for c in changes:
        if c.entity == "Lead" and c.header["changeType"] == "CREATE":
            moment = datetime.fromtimestamp(c.commit_timestamp / 1000, tz=UTC)
            if moment.weekday() >= 5:
                weekend += 1
            else:
                per_hour[moment.hour] += 1
    afternoon = sum(per_hour[h] for h in range(13, 18)) / 5
    night = sum(per_hour[h] for h in range(20, 24)) / 4
    assert afternoon > 3 * night
    weekday_per_day = (LEADS - weekend) / 8
    assert weekend / 2 < 0.5 * weekday_per_day


def test_live_simulator_is_deterministic_and_sped_up(tmp_path: Path) -> None:
    def run(name: str) -> tuple[list[tuple], LiveSimulator]:
        store = SandboxStore(tmp_path / name, clock=lambda: MONDAY)
        live = LiveSimulator(store, seed=3, leads_per_hour=3600, response_speedup=600)
        written = sum(live.step(MONDAY + second * 1000) for second in range(300))
        assert written == store.latest_replay()
        log = change_log(store)
        store.close()
        return log, live

    log, live = run("a.db")
    assert log == run("b.db")[0]
    assert 200 <= live.summary.leads <= 400  # ~one lead per second for 300 s
    assert sum(live.summary.responses.values()) > live.summary.leads / 2  # minutes became seconds
    assert all(MONDAY < entry[4] <= MONDAY + 299_000 for entry in log)
    assert [entry[4] for entry in log] == sorted(entry[4] for entry in log)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "s.db")
    with pytest.raises(ValueError, match="days > 0"):
        simulate(store, leads=10, days=0, seed=1)
    with pytest.raises(ValueError, match="response_speedup"):
        LiveSimulator(store, seed=1, leads_per_hour=10, response_speedup=0)
    store.close()
