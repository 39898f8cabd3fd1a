"""Optional outreach email send (``KPI_SEND_EMAIL``, off by default). Adapter: no Dagster.

``send_recommended_emails`` emails each routed lead the template the pipeline recommended
for it, filled with the lead's own values, through Salesforce's ``emailSimple`` action.

At most once per lead, never twice. Each send is claimed in the ledger (``sending``,
committed) *before* the call, and its outcome recorded after:

* ``sent``: Salesforce confirmed it;
* ``retry``: Salesforce refused before acting (request limits, an invalid session), so
  trying again in a later run cannot duplicate it; after ``MAX_ATTEMPTS`` it is ``failed``;
* ``failed``: it will not be sent (a template variable the lead cannot fill, a template no
  longer in the catalog, or Salesforce refused the email itself);
* ``skipped``: the lead is not to be emailed (no Email address, already answered by a
  human, deleted);
* ``unconfirmed``: the outcome is unknown (an outage or a lost response after the request
  went out). The email may have been sent, so it is **never retried automatically**; an
  operator checks the lead's activity in Salesforce and, if nothing went out, calls
  ``Ledger.reset_send``. A process that dies mid-call leaves ``sending``, treated the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kpi_pipeline.core.salesforce_rest import (
    RequestLimitError,
    SalesforceRequestError,
    SessionInvalidError,
)
from kpi_pipeline.core.sends import FAILED, RETRY, SENT, SKIPPED, UNCONFIRMED
from kpi_pipeline.core.workloads.outreach_templates import (
    MissingTemplateVariable,
    TemplateCatalog,
    fill_template,
    lead_variables,
)
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

LEAD = "Lead"
MAX_ATTEMPTS = 5  # retryable refusals (limits, session) before a send is given up
DEFAULT_MAX_AGE = timedelta(hours=24)
# Variables that come from configuration, not from the lead: missing ones stop the run
# (nothing is marked failed), because every lead would fail the same way.
CONFIG_VARIABLES = {"sender_name": "KPI_EMAIL_SENDER_NAME"}


class SendLedger(Protocol):
    """What the send needs of the ledger (``kpi_pipeline.adapters.ledger.Ledger``)."""

    def unsent_recommendations(
        self, *, limit: int, decided_since: datetime | None = None
    ) -> Sequence[Any]: ...

    def claim_send(self, lead_id: str, template_id: str, to_address: str | None) -> bool: ...

    def finish_send(self, lead_id: str, status: str, error: str | None = None) -> None: ...

    def read(self) -> AbstractContextManager[Any]: ...

    def records(
        self, conn: Any, keys: Iterable[tuple[str, str]]
    ) -> Mapping[tuple[str, str], RecordState]: ...

    def lead_facts(self, conn: Any, lead_ids: Iterable[str]) -> Mapping[str, Any]: ...


class EmailSender(Protocol):
    """What the send needs from ``kpi_pipeline.adapters.salesforce.rest.SalesforceRest``."""

    # Every email is logged on its lead and goes out as the org's default sender, so the port
    # requires the related record and leaves out the adapter's optional sender type.
    def send_email_simple(
        self, addresses: Sequence[str], subject: str, body: str, *, related_record_id: str
    ) -> None: ...


@dataclass
class SendReport:
    considered: int = 0
    sent: list[str] = field(default_factory=list)  # lead ids
    retry_later: dict[str, str] = field(default_factory=dict)  # lead id -> reason
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unconfirmed: dict[str, str] = field(default_factory=dict)
    taken_by_another_run: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped early (configuration, limits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "sent": len(self.sent),
            "retry_later": len(self.retry_later),
            "failed": dict(sorted(self.failed.items())[:20]),
            "skipped": len(self.skipped),
            "unconfirmed": dict(sorted(self.unconfirmed.items())[:20]),
            "taken_by_another_run": len(self.taken_by_another_run),
            "stopped": self.stopped,
        }


@dataclass(frozen=True, slots=True)
class _Email:
    address: str
    subject: str
    body: str


class _Outcome(Exception):
    """A recommendation that gets no email, with its status and reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ConfigurationMissing(Exception):
    pass


def send_recommended_emails(
    ledger: SendLedger,
    rest: EmailSender,
    catalog: TemplateCatalog,
    *,
    limit: int = 50,
    sender_name: str | None = None,
    max_age: timedelta | None = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> SendReport:
    """Email up to ``limit`` leads their recommended template, each at most once.

    Only recommendations decided within ``max_age`` of ``now`` are considered (None: all),
    so switching the feature on does not mail a backlog of old leads. The run stops at the
    first retryable refusal (the limit will refuse the rest too) and when a configuration
    variable (``sender_name``) is missing; see the module docstring for the outcomes.
    """
    if limit < 1:
        raise ValueError(f"send_recommended_emails(limit={limit}): limit must be at least 1")
    since = (now or datetime.now(UTC)) - max_age if max_age is not None else None
    report = SendReport()
    for pending in ledger.unsent_recommendations(limit=limit, decided_since=since):
        report.considered += 1
        lead_id = pending.lead_id
        try:
            email = _compose(ledger, catalog, lead_id, pending.template_id, sender_name)
        except _ConfigurationMissing as exc:
            report.stopped = str(exc)
            metrics.record_error("outreach_send")
            log.error("outreach send stopped: %s", exc)
            break
        except _Outcome as outcome:
            if _claim(ledger, report, lead_id, pending.template_id, None):
                ledger.finish_send(lead_id, outcome.status, outcome.reason)
                _count(report, lead_id, outcome.status, outcome.reason)
            continue
        if not _claim(ledger, report, lead_id, pending.template_id, email.address):
            continue
        status, reason = _send(rest, lead_id, email, attempts=pending.attempts + 1)
        ledger.finish_send(lead_id, status, reason)
        _count(report, lead_id, status, reason)
        if status == RETRY:
            report.stopped = f"Salesforce refused a send for now ({reason}); the rest wait"
            break
    return report


def _claim(
    ledger: SendLedger, report: SendReport, lead_id: str, template_id: str, address: str | None
) -> bool:
    if ledger.claim_send(lead_id, template_id, address):
        return True
    report.taken_by_another_run.append(lead_id)
    return False


def _compose(
    ledger: SendLedger,
    catalog: TemplateCatalog,
    lead_id: str,
    template_id: str,
    sender_name: str | None,
) -> _Email:
    """The filled email for one lead, or an ``_Outcome`` saying why it gets none."""
    with ledger.read() as conn:
        lead = ledger.records(conn, [(LEAD, lead_id)]).get((LEAD, lead_id))
        facts = ledger.lead_facts(conn, [lead_id]).get(lead_id)
    if lead is None or lead.deleted:
        raise _Outcome(SKIPPED, f"lead {lead_id} is deleted or unknown to the ledger")
    if facts is not None and facts.First_Response_At__c is not None:
        raise _Outcome(SKIPPED, f"lead {lead_id} was already answered by a person")
    address = _address(lead)
    template = catalog.get(template_id)
    if template is None:
        raise _Outcome(FAILED, f"template {template_id!r} is no longer in the catalog")
    try:
        subject, body = fill_template(
            template, lead_variables(lead.fields, sender_name=sender_name)
        )
    except MissingTemplateVariable as exc:
        if exc.variable in CONFIG_VARIABLES:
            raise _ConfigurationMissing(
                f"template {template_id!r} needs {exc.variable!r}: set "
                f"{CONFIG_VARIABLES[exc.variable]} (no email was sent or marked failed)"
            ) from None
        raise _Outcome(FAILED, f"lead {lead_id}: {exc}") from None
    return _Email(address, subject, body)


def _address(lead: RecordState) -> str:
    address = lead.fields.get("Email")
    if not isinstance(address, str) or "@" not in address:
        raise _Outcome(SKIPPED, f"lead {lead.record_id} has no Email address")
    return address.strip()


def _send(
    rest: EmailSender, lead_id: str, email: _Email, *, attempts: int
) -> tuple[str, str | None]:
    """(status, reason) of one emailSimple call."""
    try:
        rest.send_email_simple(
            [email.address], email.subject, email.body, related_record_id=lead_id
        )
    except (RequestLimitError, SessionInvalidError) as exc:  # refused before acting
        metrics.record_error("outreach_send")
        return (FAILED if attempts >= MAX_ATTEMPTS else RETRY), str(exc)
    except (SalesforceRequestError, ValueError) as exc:  # refused or invalid: not sent
        metrics.record_error("outreach_send")
        return FAILED, str(exc)
    except Exception as exc:  # outage or lost response: it may have been sent
        metrics.record_error("outreach_send")
        log.error("outreach email to lead %s unconfirmed: %s", lead_id, exc)
        return (
            UNCONFIRMED,
            f"{type(exc).__name__}: {exc}; check the lead's activity before resending",
        )
    return SENT, None


def _count(report: SendReport, lead_id: str, status: str, reason: str | None) -> None:
    if status == SENT:
        report.sent.append(lead_id)
        return
    bucket = {
        RETRY: report.retry_later,
        FAILED: report.failed,
        SKIPPED: report.skipped,
        UNCONFIRMED: report.unconfirmed,
    }[status]
    bucket[lead_id] = reason or status
