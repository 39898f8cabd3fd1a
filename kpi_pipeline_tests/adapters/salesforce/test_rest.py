"""SalesforceRest (simple-salesforce over real HTTP) against the sandbox REST server."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from pathlib import Path

import pytest

from kpi_pipeline.adapters.salesforce.rest import SalesforceRest, merge_updates
from kpi_pipeline.adapters.salesforce.soql import soql_datetime
from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime
from kpi_pipeline.core.salesforce_rest import (
    RecordUpdate,
    RequestLimitError,
    SalesforceRequestError,
    SalesforceUnavailableError,
    SessionInvalidError,
)
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID
from kpi_pipeline.sandbox.tokens import TokenRegistry
from kpi_pipeline_tests.support.sandbox_org import (
    STATIC_TOKEN,
    TENANT_ID,
    SandboxOrg,
    sandbox_org,
)

COLLECTIONS = "/composite/sobjects"


def collection_bodies(org: SandboxOrg) -> list[list[str]]:
    """Record ids of each sObject Collections request the server received, in order."""
    return [[r["id"] for r in req.body["records"]] for req in org.data_requests(COLLECTIONS)]


def rest_with_sleeps(
    org: SandboxOrg, provider=None, **kwargs
) -> tuple[SalesforceRest, list[float]]:
    sleeps: list[float] = []
    rest = SalesforceRest(
        provider or org.static_provider(),
        sleep=sleeps.append,
        rng=random.Random(7),
        session=org.http,
        **kwargs,
    )
    return rest, sleeps


# --- write-back ----------------------------------------------------------------------------


def test_update_writes_the_store_and_marks_the_echo(org: SandboxOrg) -> None:
    ids = org.create_leads(2)
    rest = org.rest(org.jwt_provider())
    report = rest.update_records(
        "Lead", [RecordUpdate(i, {"Routing_Rule__c": "na-enterprise"}) for i in ids]
    )

    assert report.ok and report.succeeded == ids and report.attempts == 1
    (request,) = org.data_requests("/composite/sobjects")
    assert request.client == "kpi_pipeline"
    assert request.auto_assign == "FALSE"  # the org's assignment rules must not undo our routing
    assert org.store.get_record("Lead", ids[0])["Routing_Rule__c"] == "na-enterprise"
    updates = [c for c in org.store.iter_changes() if c.header["changeType"] == "UPDATE"]
    assert [c.header["recordIds"] for c in updates] == [[ids[0]], [ids[1]]]
    for change in updates:
        assert change.header["changeOrigin"] == "com/salesforce/api/rest/64.0;client=kpi_pipeline"
        assert change.header["commitUser"] == INTEGRATION_USER_ID
        assert change.fields["Routing_Rule__c"] == "na-enterprise"


def test_partial_failures_are_retried_for_the_failed_records_only(org: SandboxOrg) -> None:
    ids = org.create_leads(5)
    org.server.faults.lock_rows([ids[1], ids[3]], times=1)
    rest, sleeps = rest_with_sleeps(org, base_backoff_s=0.5)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "r"}) for i in ids])

    assert sorted(report.succeeded) == sorted(ids) and not report.failed
    assert report.attempts == 2
    assert collection_bodies(org) == [ids, [ids[1], ids[3]]]
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_a_row_that_stays_locked_fails_as_retryable_after_max_attempts(org: SandboxOrg) -> None:
    ids = org.create_leads(2)
    org.server.faults.lock_rows([ids[0]], times=10)
    rest, sleeps = rest_with_sleeps(org, max_attempts=3, base_backoff_s=1.0)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "r"}) for i in ids])

    assert report.succeeded == [ids[1]]
    error = report.failed[ids[0]]
    assert error.status_code == "UNABLE_TO_LOCK_ROW" and error.retryable
    assert collection_bodies(org) == [ids, [ids[0]], [ids[0]]]
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_non_retryable_record_errors_are_reported_not_retried(org: SandboxOrg) -> None:
    good, other = org.create_leads(2)
    unknown = "00Q5g0000009999AAA"
    rest, sleeps = rest_with_sleeps(org)

    report = rest.update_records(
        "Lead",
        [
            RecordUpdate(good, {"Routing_Rule__c": "r"}),
            RecordUpdate(unknown, {"Routing_Rule__c": "r"}),
            RecordUpdate(other, {"No_Such_Field__c": 1}),
        ],
    )

    assert report.succeeded == [good]
    assert report.failed[unknown].status_code == "INVALID_CROSS_REFERENCE_KEY"
    assert report.failed[other].status_code == "INVALID_FIELD"
    assert "No_Such_Field__c" in report.failed[other].message
    assert not any(e.retryable for e in report.failed.values())
    assert report.attempts == 1 and sleeps == []


def test_request_limit_exceeded_backs_off_then_succeeds(org: SandboxOrg) -> None:
    ids = org.create_leads(3)
    org.server.faults.request_limit_exceeded_next(2)
    rest, sleeps = rest_with_sleeps(org, base_backoff_s=0.5)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "r"}) for i in ids])

    assert report.ok and sorted(report.succeeded) == sorted(ids)
    assert report.attempts == 3
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # exponential, jittered


def test_request_limit_that_persists_leaves_records_unconfirmed(org: SandboxOrg) -> None:
    ids = org.create_leads(2)
    org.server.faults.request_limit_exceeded_next(100)
    rest, sleeps = rest_with_sleeps(org, max_attempts=3)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "r"}) for i in ids])

    assert isinstance(report.error, RequestLimitError)
    assert report.unconfirmed == ids and not report.succeeded and not report.failed
    assert report.attempts == 3 and len(sleeps) == 2
    assert org.store.get_record("Lead", ids[0]).get("Routing_Rule__c") is None


def test_daily_request_limit_stops_at_once(org: SandboxOrg) -> None:
    ids = org.create_leads(1)
    org.server.faults.request_limit_exceeded_next(100, daily=True)
    rest, sleeps = rest_with_sleeps(org)

    report = rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "r"})])

    assert isinstance(report.error, RequestLimitError) and report.error.daily
    assert "daily API request allocation" in str(report.error)
    assert report.attempts == 1 and sleeps == []


def test_250_updates_are_split_into_200_and_50(org: SandboxOrg) -> None:
    ids = org.create_leads(250)
    rest = org.rest()

    report = rest.update_records(
        "Lead", [RecordUpdate(i, {"Routing_Rule__c": "bulk"}) for i in ids]
    )

    assert report.ok and len(report.succeeded) == 250 and report.attempts == 2
    assert [len(b) for b in collection_bodies(org)] == [200, 50]
    assert collection_bodies(org)[0] + collection_bodies(org)[1] == ids


def test_duplicate_updates_of_a_record_are_merged_later_fields_win(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    rest = org.rest()
    report = rest.update_records(
        "Lead",
        [
            RecordUpdate(lead, {"Routing_Rule__c": "old", "Template_Recommended__c": "t1"}),
            RecordUpdate(lead, {"Routing_Rule__c": "new"}),
        ],
    )
    assert report.succeeded == [lead]
    (body,) = org.data_requests(COLLECTIONS)
    assert body.body["records"] == [
        {
            "attributes": {"type": "Lead"},
            "id": lead,
            "Routing_Rule__c": "new",
            "Template_Recommended__c": "t1",
        }
    ]


def test_server_errors_and_dropped_connections_are_retried(org: SandboxOrg) -> None:
    ids = org.create_leads(1)
    rest, sleeps = rest_with_sleeps(org)
    org.server.faults.fail_next_requests(1)
    assert rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "a"})]).ok
    org.server.faults.fail_next_requests(1, drop_connection=True)
    assert rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "b"})]).ok
    assert len(sleeps) == 2
    assert org.store.get_record("Lead", ids[0])["Routing_Rule__c"] == "b"


def test_an_unreachable_org_leaves_everything_unconfirmed(org: SandboxOrg) -> None:
    ids = org.create_leads(250)
    org.server.faults.fail_next_requests(100, after=1)  # first chunk passes, then the org is down
    rest, _ = rest_with_sleeps(org, max_attempts=2)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "x"}) for i in ids])

    assert report.succeeded == ids[:200]
    assert report.unconfirmed == ids[200:]
    assert isinstance(report.error, SalesforceUnavailableError)
    assert "HTTP 500" in str(report.error)


def test_collection_requests_of_one_call_are_in_flight_at_once(org: SandboxOrg) -> None:
    """With concurrent_requests=3, three 200-record requests reach the org before it has
    answered the first (it answers each 3 s after applying it); one at a time, the second
    could only come after that answer."""
    ids = org.create_leads(600)
    org.server.faults.delay_updates(3.0)
    rest = SalesforceRest(org.static_provider(), session=org.http, concurrent_requests=3)
    reports = []
    call = threading.Thread(
        target=lambda: reports.append(
            rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "c"}) for i in ids])
        )
    )
    call.start()
    deadline = time.monotonic() + 2.5
    while len(collection_bodies(org)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(collection_bodies(org)) == 3 and call.is_alive(), "not sent at once"
    call.join(30)
    (report,) = reports
    assert report.ok and report.attempts == 3
    assert report.succeeded == ids  # in request order, whatever order the answers came in
    assert sorted(i for body in collection_bodies(org) for i in body) == sorted(ids)


def test_after_a_wave_that_found_the_org_down_the_rest_is_not_sent(org: SandboxOrg) -> None:
    ids = org.create_leads(1000)  # five requests, in waves of two
    org.server.faults.fail_next_requests(100, after=2)  # the first wave passes
    rest, _ = rest_with_sleeps(org, max_attempts=2, concurrent_requests=2)

    report = rest.update_records("Lead", [RecordUpdate(i, {"Routing_Rule__c": "x"}) for i in ids])

    assert report.succeeded == ids[:400]
    assert report.unconfirmed == ids[400:]  # the failed wave's two, and the fifth never sent
    assert isinstance(report.error, SalesforceUnavailableError)
    assert len(collection_bodies(org)) == 2  # the org served the first wave only
    assert report.attempts == 2 + 2 * 2  # each of the second wave's two was tried twice


# --- sessions ------------------------------------------------------------------------------


def test_expired_session_reauthenticates_once_and_succeeds(org: SandboxOrg) -> None:
    ids = org.create_leads(1)
    provider = org.jwt_provider()
    rest = org.rest(provider)
    assert rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "a"})]).ok
    first_token = provider.token().access_token

    org.server.faults.expire_sessions()
    report = rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "b"})])

    assert report.ok and report.attempts == 2
    assert provider.stats.fetches == 2 and provider.token().access_token != first_token
    assert len(org.data_requests("/services/oauth2/token")) == 2


def test_reauthentication_happens_once_then_stops(tmp_path: Path) -> None:
    # The registry's clock runs an hour ahead on every look: each new session is already over.
    ticks = iter(range(10**6))
    registry = TokenRegistry(
        [], session_seconds=60, clock=lambda: time.time() + 3600 * next(ticks), tenant_id=TENANT_ID
    )
    with sandbox_org(tmp_path, token_registry=registry) as org:
        provider = org.jwt_provider()
        rest = org.rest(provider)
        with pytest.raises(SessionInvalidError, match="again right after re-authenticating"):
            rest.query("SELECT Id FROM Lead WHERE Id IN ('00Q5g0000000001EAA')")
        assert provider.stats.fetches == 2
        assert len(org.data_requests("/query/")) == 2


def test_a_rejected_static_token_is_retried_once_then_reported(org: SandboxOrg) -> None:
    provider = org.static_provider("00D000000000001AAA!revoked")
    rest, sleeps = rest_with_sleeps(org, provider)
    ids = org.create_leads(1)

    report = rest.update_records("Lead", [RecordUpdate(ids[0], {"Routing_Rule__c": "a"})])

    assert isinstance(report.error, SessionInvalidError) and report.unconfirmed == ids
    assert provider.invalidations == 1 and report.attempts == 2 and sleeps == []
    assert "static access token cannot be renewed" in str(report.error)


# --- reads ---------------------------------------------------------------------------------


def test_get_record_and_missing_record(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    rest = org.rest()
    record = rest.get_record("Lead", lead, ["Id", "Company", "LastModifiedDate"])
    assert record["Id"] == lead and record["Company"] == "Co 0"
    assert record["LastModifiedDate"].endswith("Z") and "attributes" not in record
    assert rest.get_record("Lead", "00Q5g0000009999AAA", ["Id"]) is None


def test_query_modified_since_follows_next_records_url(tmp_path: Path) -> None:
    clock_ms = iter(range(1_800_000_000_000, 1_900_000_000_000, 60_000))
    with sandbox_org(tmp_path, query_batch_size=2) as org:
        org.store.clock = lambda: next(clock_ms)  # one minute between commits
        ids = [org.create_leads(1)[0] for _ in range(5)]
        rest = org.rest()
        since = dt.datetime.fromtimestamp(1_800_000_060, dt.UTC)  # the 2nd lead's commit
        until = dt.datetime.fromtimestamp(1_800_000_240, dt.UTC)  # the 5th lead's commit

        rows = rest.query_modified_since("Lead", ["Company"], since, until)
        everything = rest.query_modified_since(
            "Lead", ["Company"], dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        )

    assert [r["Id"] for r in rows] == ids[1:4]
    assert set(rows[0]) == {"Id", "LastModifiedDate", "Company"}
    assert [r["Id"] for r in everything] == ids
    assert len([r for r in org.server.received if "/query/" in r.path]) == 2 + 3  # 2 pages, then 3


def test_query_by_ids(org: SandboxOrg) -> None:
    ids = org.create_leads(3)
    rows = org.rest().query_by_ids("Lead", ["Status"], [ids[2], ids[0], ids[2]])
    assert sorted(r["Id"] for r in rows) == sorted([ids[0], ids[2]])
    assert all(r["Status"] == "Open" for r in rows)


def test_unsupported_soql_is_a_clear_request_error(org: SandboxOrg) -> None:
    with pytest.raises(SalesforceRequestError, match=r"MALFORMED_QUERY.*unsupported WHERE clause"):
        org.rest().query("SELECT Id FROM Lead WHERE Company = 'Acme'")


def test_send_email_simple(org: SandboxOrg) -> None:
    (lead,) = org.create_leads(1)
    org.rest().send_email_simple(
        ["a@example.com", "b@example.com"], "Hello", "Body", related_record_id=lead
    )
    (sent,) = org.server.sent_emails
    assert sent["emailAddresses"] == "a@example.com,b@example.com"
    assert sent["relatedRecordId"] == lead and sent["logEmailOnSend"] is True


def test_email_is_not_resent_after_an_outage(org: SandboxOrg) -> None:
    rest, sleeps = rest_with_sleeps(org)
    org.server.faults.fail_next_requests(1, drop_connection=True)
    with pytest.raises(SalesforceUnavailableError):
        rest.send_email_simple(["a@example.com"], "Hello", "Body")
    # A resend would have reached the server (only the first request is dropped) and sent it.
    assert org.data_requests("/emailSimple") == [] and org.server.sent_emails == []
    assert sleeps == []
    org.server.faults.request_limit_exceeded_next(1)  # refused before acting: safe to resend
    rest.send_email_simple(["a@example.com"], "Hello", "Body")
    assert len(org.server.sent_emails) == 1 and len(sleeps) == 1


# --- input validation and helpers ------------------------------------------------------------


def test_bad_inputs_are_refused_before_any_request(org: SandboxOrg) -> None:
    rest = org.rest()
    with pytest.raises(ValueError, match="sObject type 'Lead; DROP'"):
        rest.update_records("Lead; DROP", [])
    with pytest.raises(ValueError, match="record id 'abc'"):
        rest.update_records("Lead", [RecordUpdate("abc", {"Routing_Rule__c": "r"})])
    with pytest.raises(ValueError, match=r"field name 'Name\) FROM User --'"):
        rest.query_modified_since("Lead", ["Name) FROM User --"], dt.datetime.now(dt.UTC))
    with pytest.raises(ValueError, match="api_version"):
        SalesforceRest(org.static_provider(), api_version="v64")
    assert org.server.received == []


def test_merge_updates_and_soql_datetime() -> None:
    merged = merge_updates(
        [
            RecordUpdate("00Q5g0000000001EAA", {"A": 1, "B": 1}),
            RecordUpdate("00Q5g0000000002EAA", {"A": 2}),
            RecordUpdate("00Q5g0000000001EAA", {"B": None}),
        ]
    )
    assert merged == [
        RecordUpdate("00Q5g0000000001EAA", {"A": 1, "B": None}),
        RecordUpdate("00Q5g0000000002EAA", {"A": 2}),
    ]
    tz = dt.timezone(dt.timedelta(hours=2))
    assert (
        soql_datetime(dt.datetime(2024, 5, 1, 12, 0, 1, 999, tzinfo=tz)) == "2024-05-01T10:00:01Z"
    )


def test_static_token_constant_is_accepted(org: SandboxOrg) -> None:
    # The default provider in these tests is the sandbox's static token (kpi-pipeline sandbox serve --access-token).
    assert org.registry.is_valid(STATIC_TOKEN)
    assert org.rest().query("SELECT Id FROM Lead LIMIT 1") == []


# --- field history (LeadHistory) ------------------------------------------------------------


def test_owner_history_is_read_in_chunks_of_200_ids_oldest_first(org: SandboxOrg) -> None:
    from kpi_pipeline.sandbox.store import INBOUND_QUEUE, REP_USER_IDS

    leads = org.create_leads(201)
    t0 = int(time.time() * 1000) // 1000 * 1000 - 3_600_000
    org.store.update_record(
        "Lead", leads[-1], {"OwnerId": REP_USER_IDS[0]}, user_id=INTEGRATION_USER_ID, at_ms=t0
    )
    org.store.update_record(
        "Lead", leads[0], {"OwnerId": INBOUND_QUEUE.id}, user_id=REP_USER_IDS[1], at_ms=t0 + 1000
    )
    before = len(org.data_requests("/query/"))
    rows = org.rest().field_history("Lead", "Owner", leads + leads[:5])  # duplicates: once
    assert len(org.data_requests("/query/")) - before == 2
    # User -> user: the id row only; user -> queue: the id row and the names row.
    assert [(r["LeadId"], r["Field"], r["NewValue"], r["CreatedById"]) for r in rows] == [
        (leads[-1], "Owner", REP_USER_IDS[0], INTEGRATION_USER_ID),
        (leads[0], "Owner", INBOUND_QUEUE.id, REP_USER_IDS[1]),
        (leads[0], "Owner", INBOUND_QUEUE.name, REP_USER_IDS[1]),
    ]
    assert {r["OldValue"] for r in rows} == {None}  # create_leads gives the leads no owner
    stamps = [format_sf_datetime(parse_sf_datetime(ms)) for ms in (t0, t0 + 1000, t0 + 1000)]
    assert [r["CreatedDate"] for r in rows] == stamps  # the changes' commit times


def test_an_org_without_lead_history_gets_a_clear_error(tmp_path: Path) -> None:
    from kpi_pipeline.core.salesforce_rest import HistoryUnavailableError

    with sandbox_org(tmp_path, field_history=False) as org:
        [lead] = org.create_leads(1)
        with pytest.raises(HistoryUnavailableError, match="Set History Tracking") as failed:
            org.rest().field_history("Lead", "Owner", [lead])
        assert failed.value.error_code == "INVALID_TYPE"
        with pytest.raises(ValueError, match="not a 15- or 18-character"):
            org.rest().field_history("Lead", "Owner", ["not-an-id"])


def test_lead_history_refuses_columns_a_real_org_does_not_have(org: SandboxOrg) -> None:
    [lead] = org.create_leads(1)
    with pytest.raises(SalesforceRequestError, match="No such column 'Foo' on entity"):
        org.rest().query(f"SELECT LeadId, Foo FROM LeadHistory WHERE LeadId = '{lead}'")
    with pytest.raises(SalesforceRequestError, match="must filter on LeadId"):
        org.rest().query("SELECT LeadId FROM LeadHistory")
