"""send_recommended_emails against the sandbox REST server (real HTTP on loopback) and a
real ledger: sends once, retries never resend, unfillable templates are reported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.outreach_send import MAX_ATTEMPTS, send_recommended_emails
from kpi_pipeline.config import Settings
from kpi_pipeline.core.workloads.outreach_templates import fill_template, load_catalog
from kpi_pipeline_tests.support.events import MINUTE, T0, lead_created, task_done
from kpi_pipeline_tests.support.processors import make_processor
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg

CATALOG = load_catalog()
LEAD_1, LEAD_2, LEAD_3 = "00Q000000000001AAA", "00Q000000000002AAA", "00Q000000000003AAA"
NOW = datetime.fromtimestamp(T0 / 1000, tz=UTC) + timedelta(hours=1)  # decisions: event clock
SENDER = "Ana from Acme"


def _lead(lead_id: str, minute: int = 0, **fields: object):
    values = {"FirstName": "Grace", "Email": f"{lead_id.lower()}@example.com"}
    values.update(fields)
    return lead_created(lead_id, T0 + minute * MINUTE, **values)


def _send(ledger: Ledger, org: SandboxOrg, **kwargs: object):
    kwargs.setdefault("sender_name", SENDER)
    kwargs.setdefault("now", NOW)
    return send_recommended_emails(ledger, org.rest(), CATALOG, **kwargs)


def _status(ledger: Ledger) -> dict[str, str]:
    return {row.lead_id: row.status for row in ledger.outreach_sends()}


def test_sends_the_filled_template_once_and_a_retry_does_not_resend(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process([_lead(LEAD_1)])
    assert ledger.outreach_sends() == []  # a send row comes with the first attempt

    report = _send(ledger, org)
    assert report.sent == [LEAD_1] and report.considered == 1
    (email,) = org.server.sent_emails
    template = CATALOG.get(_recommended(ledger))
    assert template is not None and "sender_name" in template.required_variables
    expected = fill_template(
        template, {"first_name": "Grace", "company": "Small Co", "sender_name": SENDER}
    )
    assert (email["emailSubject"], email["emailBody"]) == expected
    assert email["emailAddresses"] == "00q000000000001aaa@example.com"
    assert email["relatedRecordId"] == LEAD_1 and email["logEmailOnSend"] is True
    (row,) = ledger.outreach_sends()
    assert (row.status, row.attempts, row.error) == ("sent", 1, None)
    assert row.sent_at is not None and row.to_address == email["emailAddresses"]

    again = _send(ledger, org)  # the run is retried, or the next batch's run comes along
    assert (again.considered, again.sent) == (0, [])
    assert len(org.server.sent_emails) == 1


def _recommended(ledger: Ledger) -> str:
    with ledger.read() as conn:
        return ledger.template_recommendations(conn, [LEAD_1])[LEAD_1]


def test_a_send_claimed_by_a_run_that_died_is_never_resent(ledger: Ledger, org: SandboxOrg) -> None:
    make_processor(ledger).process([_lead(LEAD_1)])
    # A run claimed the send and died before recording the outcome (the email may be out).
    assert ledger.claim_send(LEAD_1, _recommended(ledger), "x@example.com")
    assert ledger.claim_send(LEAD_1, _recommended(ledger), "x@example.com") is False
    report = _send(ledger, org)
    assert report.considered == 0 and org.server.sent_emails == []
    assert _status(ledger) == {LEAD_1: "sending"}


def test_an_outage_leaves_the_send_unconfirmed_until_an_operator_resets_it(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process([_lead(LEAD_1)])
    org.server.faults.fail_next_requests(1)  # HTTP 500: did Salesforce act? we cannot know
    report = _send(ledger, org)
    assert list(report.unconfirmed) == [LEAD_1] and report.sent == []
    assert "check the lead's activity" in report.unconfirmed[LEAD_1]
    assert _send(ledger, org).considered == 0  # never resent automatically
    assert org.server.sent_emails == []

    assert ledger.reset_send(LEAD_1)  # the operator checked: nothing went out
    assert _send(ledger, org).sent == [LEAD_1]
    assert len(org.server.sent_emails) == 1
    assert ledger.outreach_sends()[0].attempts == 2


def test_a_refusal_before_acting_is_retried_by_a_later_run(ledger: Ledger, org: SandboxOrg) -> None:
    make_processor(ledger).process([_lead(LEAD_1), _lead(LEAD_2, 1)])
    org.server.faults.request_limit_exceeded_next(10)  # more than the client's own retries
    report = send_recommended_emails(
        ledger, org.rest(max_attempts=2), CATALOG, sender_name=SENDER, now=NOW
    )
    assert list(report.retry_later) == [LEAD_1] and "limit" in report.retry_later[LEAD_1].lower()
    assert report.considered == 1 and report.stopped  # LEAD_2 waits: the limit would refuse it
    assert _status(ledger) == {LEAD_1: "retry"}
    org.server.faults.request_limit_exceeded_next(0)
    later = _send(ledger, org)
    assert later.sent == [LEAD_1, LEAD_2]
    assert [e["relatedRecordId"] for e in org.server.sent_emails] == [LEAD_1, LEAD_2]


def test_retryable_refusals_give_up_after_max_attempts(ledger: Ledger, org: SandboxOrg) -> None:
    make_processor(ledger).process([_lead(LEAD_1)])
    rest = org.rest(max_attempts=1)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        org.server.faults.request_limit_exceeded_next(1)
        send_recommended_emails(ledger, rest, CATALOG, sender_name=SENDER, now=NOW)
        assert ledger.outreach_sends()[0].attempts == attempt
    assert _status(ledger) == {LEAD_1: "failed"}
    assert _send(ledger, org).considered == 0 and org.server.sent_emails == []


def test_a_missing_variable_is_reported_and_nothing_is_sent(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process([_lead(LEAD_1, FirstName=None), _lead(LEAD_2, 1)])
    report = _send(ledger, org)
    assert list(report.failed) == [LEAD_1]
    assert "first_name" in report.failed[LEAD_1]
    assert report.sent == [LEAD_2]
    assert [e["relatedRecordId"] for e in org.server.sent_emails] == [LEAD_2]
    (failed,) = ledger.outreach_sends("failed")
    assert failed.lead_id == LEAD_1 and "first_name" in failed.error
    assert _send(ledger, org).considered == 0  # a failed recommendation is not retried


def test_leads_without_email_or_already_answered_are_skipped_with_the_reason(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process(
        [
            _lead(LEAD_1, Email=None),
            _lead(LEAD_2, 1),
            task_done("00T000000000002AAA", LEAD_2, T0 + 3 * MINUTE),  # a rep called already
            _lead(LEAD_3, 2),
        ]
    )
    report = _send(ledger, org)
    assert report.skipped == {
        LEAD_1: f"lead {LEAD_1} has no Email address",
        LEAD_2: f"lead {LEAD_2} was already answered by a person",
    }
    assert report.sent == [LEAD_3]
    assert [e["relatedRecordId"] for e in org.server.sent_emails] == [LEAD_3]


def test_a_missing_sender_name_stops_the_run_without_marking_anything(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process([_lead(LEAD_1)])
    report = _send(ledger, org, sender_name=None)
    assert report.stopped and "KPI_EMAIL_SENDER_NAME" in report.stopped
    assert ledger.outreach_sends() == [] and org.server.sent_emails == []
    assert _send(ledger, org).sent == [LEAD_1]  # configured: the lead is still eligible


def test_only_recent_recommendations_and_at_most_limit_are_sent(
    ledger: Ledger, org: SandboxOrg
) -> None:
    make_processor(ledger).process([_lead(LEAD_1), _lead(LEAD_2, 1), _lead(LEAD_3, 2)])
    stale = _send(ledger, org, now=NOW + timedelta(days=2))  # a backlog is never mailed
    assert stale.considered == 0 and org.server.sent_emails == []
    first = _send(ledger, org, limit=2)
    assert first.sent == [LEAD_1, LEAD_2]  # oldest decisions first
    assert _send(ledger, org, limit=2).sent == [LEAD_3]
    with pytest.raises(ValueError, match="at least 1"):
        _send(ledger, org, limit=0)


def test_sending_is_off_by_default() -> None:
    assert Settings().send_email is False


@pytest.mark.postgres
def test_concurrent_runs_on_postgresql_send_each_lead_once(
    make_postgres_db: Callable[[], str], org: SandboxOrg
) -> None:
    import threading

    url = make_postgres_db()
    seed = Ledger.from_url(url)
    make_processor(seed).process([_lead(f"00Q000000000{n:03d}AAA", n) for n in range(1, 21)])
    ledgers = [Ledger.from_url(url) for _ in range(3)]
    reports = []

    def run(ledger: Ledger) -> None:
        reports.append(
            send_recommended_emails(ledger, org.rest(), CATALOG, sender_name=SENDER, now=NOW)
        )

    threads = [threading.Thread(target=run, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent_to = [e["relatedRecordId"] for e in org.server.sent_emails]
    assert len(sent_to) == 20 and len(set(sent_to)) == 20
    assert sum(len(r.sent) for r in reports) == 20
    for ledger in [seed, *ledgers]:
        ledger.dispose()


def test_operators_list_and_reset_sends_from_the_command_line(
    tmp_path: Path, org: SandboxOrg, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from kpi_pipeline.cli.main import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    ledger = Ledger.from_url(url)
    try:
        make_processor(ledger).process([_lead(LEAD_1)])
        org.server.faults.fail_next_requests(1)
        _send(ledger, org)
    finally:
        ledger.dispose()
    assert main(["ledger", "outreach-sends", "--url", url, "--status", "unconfirmed"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["lead_id"], row["status"], row["sent_at"]) == (LEAD_1, "unconfirmed", "")
    assert main(["ledger", "outreach-sends", "--url", url, "--reset", LEAD_1]) == 0
    assert json.loads(capsys.readouterr().out) == {"lead_id": LEAD_1, "reset": True}
    assert main(["ledger", "outreach-sends", "--url", url, "--reset", LEAD_1]) == 0
    assert json.loads(capsys.readouterr().out)["reset"] is False  # already eligible
