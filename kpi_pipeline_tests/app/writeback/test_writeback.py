"""The write-back over the real ledger (SQLite and PostgreSQL) and the sandbox org's REST server:
values are read when sent, stale rows are superseded, lost responses and dead drainers
lose nothing, and nothing the org shows ever moves later."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.outbox_drain import OutboxItem
from kpi_pipeline.app.writeback import LedgerOutbox, Superseded, drain_writeback
from kpi_pipeline.core.events import format_sf_datetime
from kpi_pipeline.core.salesforce_rest import RecordUpdate
from kpi_pipeline.core.workloads.first_touch import FirstResponse
from kpi_pipeline.telemetry import metrics
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg
from kpi_pipeline_tests.support.writeback import RULES, org_value

CREATED = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
REP = "005000000000030AAA"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked_ledger(ledger_url: str) -> Iterator[tuple[Ledger, Clock]]:
    clock = Clock()
    ledger = Ledger.from_url(ledger_url, clock=clock)
    yield ledger, clock
    ledger.dispose()


def improve(ledger: Ledger, lead_id: str, minutes: float, source: str = "Task") -> None:
    """The ledger learns of an (earlier) first response and marks its fields dirty."""
    at = CREATED + timedelta(minutes=minutes)
    response = FirstResponse(
        at=at,
        source=source,
        record_id=f"00T00000000{int(minutes * 100):04d}AAA",
        user_id=REP,
        minutes=minutes,
    )
    with ledger.write() as conn:
        ledger.ensure_lead_facts(conn, lead_id, created=CREATED, owner_id=None)
        assert ledger.improve_first_response(conn, lead_id, response)
        ledger.mark_dirty(conn, "Lead", lead_id, ["First_Response_At__c"])


def org_first_responses(org: SandboxOrg, lead_id: str) -> list[str]:
    """Every First_Response_At__c value our writes set on the lead, in commit order."""
    return [
        format_sf_datetime(datetime.fromtimestamp(change.fields["First_Response_At__c"] / 1e3, UTC))
        for change in org.store.iter_changes()
        if change.header["recordIds"] == [lead_id]
        and "client=kpi_pipeline" in change.header["changeOrigin"]
        and "First_Response_At__c" in change.fields
    ]


def test_a_stale_row_is_superseded_by_the_newer_value(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, _ = clocked_ledger
    (lead,) = org.create_leads(1)
    improve(ledger, lead, 90, "EmailMessage")
    improve(ledger, lead, 30)  # an earlier response arrives before anything was sent

    result = drain_writeback(ledger, org.rest(), RULES)

    assert len(result.report.sent) == 1  # one row per record, one update
    assert org_first_responses(org, lead) == ["2026-11-18T09:30:00.000Z"]
    assert org_value(org, lead, "First_Response_Source__c") == "Task"
    assert [r.status for r in ledger.outbox()] == ["sent"]
    assert drain_writeback(ledger, org.rest(), RULES).report.claimed == 0


def _writeback_lag_count_and_sum() -> tuple[float, float]:
    return (
        metrics.sample_value("writeback_lag_seconds_count"),
        metrics.sample_value("writeback_lag_seconds_sum"),
    )


def test_each_confirmed_row_observes_how_long_its_change_waited(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, clock = clocked_ledger
    (lead,) = org.create_leads(1)
    clock.now -= timedelta(seconds=90)  # the decision was applied 90 s ago
    improve(ledger, lead, 30)
    count, total = _writeback_lag_count_and_sum()

    assert len(drain_writeback(ledger, org.rest(), RULES).report.sent) == 1

    after_count, after_total = _writeback_lag_count_and_sum()
    assert after_count == count + 1
    assert 90 <= after_total - total < 90 + 60


def _answered_and_claimed(org: SandboxOrg, ledger: Ledger) -> tuple[str, LedgerOutbox, OutboxItem]:
    """A new lead answered by an email after 90 minutes, its outbox row claimed by a drainer
    holding a 60 s lease: (lead, drainer, claimed item)."""
    (lead,) = org.create_leads(1)
    improve(ledger, lead, 90, "EmailMessage")
    drainer = LedgerOutbox(ledger, org.rest(), RULES, lease=timedelta(seconds=60))
    (item,) = drainer.claim_pending(10)
    return lead, drainer, item


def test_a_resend_after_a_lost_response_sends_the_current_value(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, clock = clocked_ledger
    # A drainer claims, the org applies its update, and it dies before confirming (kill -9
    # between the REST call and the ledger write): the row stays claimed under its lease.
    lead, _, item = _answered_and_claimed(org, ledger)
    org.rest().update_records("Lead", [RecordUpdate(item.record_id, item.fields)])
    improve(ledger, lead, 30)  # meanwhile the ledger learned of an earlier response
    assert drain_writeback(ledger, org.rest(), RULES).report.claimed == 0  # lease still held

    clock.now += timedelta(seconds=61)  # the lease runs out; no new traffic needed
    result = drain_writeback(ledger, org.rest(), RULES)

    assert result.report.sent == [item.id]
    assert org_first_responses(org, lead) == [
        "2026-11-18T10:30:00.000Z",
        "2026-11-18T09:30:00.000Z",  # only ever earlier
    ]
    (row,) = ledger.outbox()
    assert (row.status, row.confirmed["First_Response_At__c"]) == (
        "sent",
        "2026-11-18T09:30:00.000Z",
    )


def test_a_drainer_that_lost_its_lease_sends_nothing(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, clock = clocked_ledger
    lead, slow, item = _answered_and_claimed(org, ledger)  # then it stalls past its lease
    improve(ledger, lead, 30)
    clock.now += timedelta(seconds=61)
    drain_writeback(ledger, org.rest(), RULES)  # another drainer retakes and sends 09:30

    assert slow.still_held([item.id]) == set()  # so the stalled one never sends 10:30
    assert org_first_responses(org, lead) == ["2026-11-18T09:30:00.000Z"]


def test_values_refused_for_good_do_not_park_newer_ones_computed_meanwhile(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    """The org refuses what a drainer sent for good, while the ledger has learned of an
    earlier response: the row waits for the next drain with the new value, not for an
    operator, and the next drain sends it."""
    ledger, _ = clocked_ledger
    lead, drainer, item = _answered_and_claimed(org, ledger)
    improve(ledger, lead, 30)
    drainer.mark_failed(item.id, "FIELD_CUSTOM_VALIDATION_EXCEPTION", retryable=False)

    assert [r.record_id for r in ledger.outbox("pending")] == [lead]
    assert drain_writeback(ledger, org.rest(), RULES).report.sent == [item.id]
    assert org_first_responses(org, lead) == ["2026-11-18T09:30:00.000Z"]


class _ProcessingBeside:
    """The org's REST API while a batch runs beside the drain (the stream worker's drain
    thread): the first request's lead gets an earlier first response meanwhile, and every
    request brings one more lead to write back."""

    def __init__(self, org: SandboxOrg, ledger: Ledger, new_leads: list[str]) -> None:
        self.rest, self.ledger, self.new_leads = org.rest(), ledger, list(new_leads)
        self.requests = 0

    def update_records(self, sobject: str, updates: list[RecordUpdate]) -> Any:
        report = self.rest.update_records(sobject, updates)
        self.requests += 1
        if self.requests == 1:
            improve(self.ledger, updates[0].record_id, 80)
        if self.new_leads:
            improve(self.ledger, self.new_leads.pop(0), 45)
        return report


def test_a_drain_beside_processing_ends_at_a_row_changed_during_it(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    """While new rows keep coming, a drain that only gave back the rows changed during it
    went on round after round, giving them back each time: they waited for a drain in
    another run (30 s and more). It now ends at the first round that meets one, and the
    next drain sends it first."""
    ledger, _ = clocked_ledger
    leads = org.create_leads(12)
    improve(ledger, leads[0], 90)
    beside = _ProcessingBeside(org, ledger, leads[1:])

    first = drain_writeback(ledger, beside, RULES, batch_size=2)

    assert beside.requests == 2  # its own lead, then one new lead beside the changed one
    (row,) = ledger.outbox(record_id=leads[0])
    assert (row.status, row.last_error) == ("pending", "changed again during this drain")
    assert first.report.retry_later == {row.id: "changed again during this drain"}
    second = drain_writeback(ledger, org.rest(), RULES)
    assert org_first_responses(org, leads[0]) == [
        "2026-11-18T10:30:00.000Z",
        "2026-11-18T10:20:00.000Z",
    ]
    assert row.id in second.report.sent


def test_an_org_failure_leaves_rows_pending_for_the_next_drain(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, _ = clocked_ledger
    leads = org.create_leads(5)
    for lead in leads:
        improve(ledger, lead, 45)
    org.server.faults.fail_next_requests(10, after=1)

    first = drain_writeback(ledger, org.rest(max_attempts=2), RULES, batch_size=3)

    assert len(first.report.sent) == 3 and first.report.error is not None
    assert sorted(r.record_id for r in ledger.outbox("pending")) == sorted(leads[3:])
    org.server.faults.fail_next_requests(0)
    second = drain_writeback(ledger, org.rest(), RULES, batch_size=3)
    assert second.report.complete and len(second.report.sent) == 2
    assert all(org_first_responses(org, lead) == ["2026-11-18T09:45:00.000Z"] for lead in leads)


def test_an_owner_a_person_gave_in_the_org_is_never_overwritten(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, _ = clocked_ledger
    (lead,) = org.create_leads(1)
    routed_to_our_owner(ledger, lead)
    # A rep takes the lead in the org before our decision reaches it; its change event
    # has not reached the ledger yet.
    org.store.update_record("Lead", lead, {"OwnerId": REP}, user_id=REP)
    recorded: list[Superseded] = []

    class Recorder:
        def record_superseded(self, superseded: list[Superseded]) -> None:
            recorded.extend(superseded)

    result = drain_writeback(ledger, org.rest(), RULES, recorder=Recorder())

    assert org_value(org, lead, "OwnerId") == REP
    assert org_value(org, lead, "Routing_Rule__c") == "smb-default"
    assert recorded == [Superseded(lead, "005000000000015AAA", REP, "org")]
    assert result.summary()["superseded"] == 1
    assert [r.status for r in ledger.outbox()] == ["sent"]


def test_owner_writes_dropped_in_one_drain_are_logged_in_one_line(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    # Under Dagster each log line is a stored event: one line per drain, not per lead.
    ledger, _ = clocked_ledger
    leads = org.create_leads(7)
    for lead in leads:
        routed_to_our_owner(ledger, lead)
        org.store.update_record("Lead", lead, {"OwnerId": REP}, user_id=REP)

    with caplog.at_level(logging.INFO, logger="kpi_pipeline.app.writeback"):
        result = drain_writeback(ledger, org.rest(), RULES, batch_size=3)

    assert result.summary()["superseded"] == 7
    lines = [r.getMessage() for r in caplog.records if r.name == "kpi_pipeline.app.writeback"]
    shown = sorted(leads)[:5]
    assert lines == [
        "owner writes dropped for 7 leads a person took: "
        + ", ".join(f"{lead} -> {REP} (org)" for lead in shown)
        + " and 2 more"
    ]


def routed_to_our_owner(ledger: Ledger, lead: str) -> None:
    """``lead`` routed to one of our pool's reps, its OwnerId and rule marked for write-back."""
    from kpi_pipeline.core.workloads.lead_route import RoutingDecision

    decision = RoutingDecision(
        lead_id=lead,
        owner_id="005000000000015AAA",
        rule_id="smb-default",
        pool_id="smb",
        policy_version="test-1",
        sla_minutes=60.0,
        decided_at=CREATED,
        explanation={},
    )
    with ledger.write() as conn:
        ledger.ensure_lead_facts(conn, lead, created=CREATED, owner_id=decision.owner_id)
        ledger.insert_routing_decision(conn, decision)
        ledger.set_routing_facts(conn, decision)
        ledger.mark_dirty(conn, "Lead", lead, ["OwnerId", "Routing_Rule__c"])


def test_rows_with_nothing_to_send_neither_reach_the_org_nor_end_the_drain(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock]
) -> None:
    ledger, _ = clocked_ledger
    first, *others = org.create_leads(3)
    improve(ledger, first, 45)
    drain_writeback(ledger, org.rest(), RULES)
    with ledger.write() as conn:  # re-marked, but the org already has these values
        ledger.mark_dirty(conn, "Lead", first, ["First_Response_At__c"])
    for lead in others:
        improve(ledger, lead, 20)

    result = drain_writeback(ledger, org.rest(), RULES, batch_size=1)

    assert len(result.report.sent) == 2 and result.report.complete
    assert org_first_responses(org, first) == ["2026-11-18T09:45:00.000Z"]  # no second update
    assert {r.status for r in ledger.outbox()} == {"sent"}


def test_a_record_deleted_in_the_org_is_not_written_and_nothing_fails(
    org: SandboxOrg, clocked_ledger: tuple[Ledger, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    from kpi_pipeline.core.workloads.records import RecordState

    ledger, _ = clocked_ledger
    (lead,) = org.create_leads(1)
    improve(ledger, lead, 30)  # decided and queued for write-back...
    org.store.delete_record("Lead", lead, user_id=REP)  # ...then deleted in the org
    with ledger.write() as conn:  # and its DELETE event merged into the ledger
        ledger.save_records(conn, [RecordState("Lead", lead, deleted=True)])
    before = len(org.data_requests("/composite/sobjects"))

    with caplog.at_level(logging.INFO, logger="kpi_pipeline.app.writeback"):
        result = drain_writeback(ledger, org.rest(), RULES)

    assert result.report.failed == {} and len(org.data_requests("/composite/sobjects")) == before
    assert [r.status for r in ledger.outbox()] == ["sent"]
    lines = [r.getMessage() for r in caplog.records if r.name == "kpi_pipeline.app.writeback"]
    assert lines == [f"write-back dropped for 1 record deleted in the org: {lead}"]
