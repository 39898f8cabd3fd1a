"""Record writes over the sandbox REST API, driven by simple-salesforce as an integration
tool or a web-to-lead form would: Salesforce's answers and error shapes, and the CDC change
events a real org publishes for each write (type, commit user, change origin)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.api import SFType
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from kpi_pipeline.adapters.auth.jwt import JWTTokenProvider
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import encode_change
from kpi_pipeline.sandbox.rest_server import ConnectedApp, RunningRestServer, start_rest_server
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, INTEGRATION_USER_ID, REPS, SandboxStore
from kpi_pipeline.sandbox.tokens import TokenRegistry
from kpi_pipeline_tests.support.sandbox_org import (
    CONSUMER_KEY,
    STATIC_TOKEN,
    TENANT_ID,
    USERNAME,
    key_and_certificate,
)

VERSION = "64.0"
REP = REPS[0]
REP_USERNAME = REP.email
REST_ORIGIN = f"com/salesforce/api/rest/{VERSION}"
WEB_FORM = {"Sforce-Call-Options": "client=web-to-lead"}


@dataclass
class Org:
    store: SandboxStore
    server: RunningRestServer
    statuses: list[int]  # HTTP status of every response the clients received, in order

    def client(self, token: str = STATIC_TOKEN) -> Salesforce:
        session = requests.Session()
        session.hooks["response"].append(lambda r, *_a, **_k: self.statuses.append(r.status_code))
        return Salesforce(
            instance_url=self.server.url, session_id=token, version=VERSION, session=session
        )

    def rep_token(self) -> str:
        private_pem, _ = key_and_certificate()
        provider = JWTTokenProvider(
            self.server.url, CONSUMER_KEY, REP_USERNAME, private_key_pem=private_pem
        )
        return provider.token().access_token

    def changes(self, after: int = 0) -> list[StoredChange]:
        return list(self.store.iter_changes(after))


def sobject(sf: Salesforce, name: str) -> SFType:
    """``sf.<name>`` pointed at the sandbox's plain-HTTP loopback URL: simple-salesforce
    builds sObject URLs as https, which only a real org (or a TLS proxy) serves."""
    handle: SFType = getattr(sf, name)
    handle.base_url = f"http://{sf.sf_instance}/services/data/v{VERSION}/sobjects/{name}/"
    return handle


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Org]:
    _, cert_pem = key_and_certificate()
    store = SandboxStore(tmp_path / "sandbox.db")
    app = ConnectedApp(
        CONSUMER_KEY,
        certificate_pem=cert_pem,
        allowed_usernames={USERNAME: INTEGRATION_USER_ID, REP_USERNAME: REP.id},
    )
    server = start_rest_server(
        store,
        token_registry=TokenRegistry([STATIC_TOKEN], tenant_id=TENANT_ID),
        connected_app=app,
        tenant_id=TENANT_ID,
        integration_user_id=INTEGRATION_USER_ID,
    )
    try:
        yield Org(store, server, [])
    finally:
        server.stop()
        store.close()


def web_lead(**extra: Any) -> dict[str, Any]:
    return {
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Company": "Analytical Engines",
        "Email": "ada@example.com",
        "Status": "Open",
        "OwnerId": INBOUND_QUEUE.id,
        **extra,
    }


# --- create, update, delete ---------------------------------------------------------------------


def test_lead_create_answers_201_and_publishes_the_create_event(org: Org) -> None:
    leads = sobject(org.client(), "Lead")

    result = leads.create(web_lead(NumberOfEmployees=40), headers=WEB_FORM)

    assert org.statuses == [201]
    assert result == {"id": result["id"], "success": True, "errors": []}
    assert result["id"].startswith("00Q") and len(result["id"]) == 18
    (change,) = org.changes()
    header = change.header
    assert (header["changeType"], header["recordIds"]) == ("CREATE", [result["id"]])
    assert header["commitUser"] == INTEGRATION_USER_ID  # the static token's user
    assert header["changeOrigin"] == f"{REST_ORIGIN};client=web-to-lead"
    assert change.fields["Name"] == {"FirstName": "Ada", "LastName": "Lovelace"}
    assert change.fields["OwnerId"] == INBOUND_QUEUE.id  # queue-owned: the pipeline routes it
    assert change.fields["NumberOfEmployees"] == 40
    encode_change(change)  # subscribers can decode it: the Pub/Sub server encodes this event
    assert leads.get(result["id"])["Company"] == "Analytical Engines"


def test_writes_with_a_jwt_token_are_committed_by_that_user(org: Org) -> None:
    sf = org.client(org.rep_token())
    lead_id = sobject(sf, "Lead").create(web_lead(OwnerId=REP.id))["id"]
    tasks = sobject(sf, "Task")
    after = org.store.latest_replay()

    task_id = tasks.create({"Subject": "Call", "WhoId": lead_id, "Status": "Not Started"})["id"]
    assert tasks.update(task_id, {"Status": "Completed", "IsClosed": True}) == 204
    assert tasks.delete(task_id) == 204

    changes = org.changes(after)
    assert [c.header["changeType"] for c in changes] == ["CREATE", "UPDATE", "DELETE"]
    assert {c.header["commitUser"] for c in changes} == {REP.id}
    assert {c.header["changeOrigin"] for c in changes} == {REST_ORIGIN}  # no client named
    assert changes[0].fields["OwnerId"] == REP.id  # no OwnerId sent: the caller owns it
    assert {"Status", "IsClosed"} <= set(changes[1].header["changedFields"])
    for change in changes:
        encode_change(change)


def test_update_answers_204_and_publishes_only_the_changed_fields(org: Org) -> None:
    leads = sobject(org.client(), "Lead")
    lead_id = leads.create(web_lead())["id"]
    after = org.store.latest_replay()

    status = leads.update(
        lead_id, {"Status": "Working", "Email": "ada@example.com"}, headers=WEB_FORM
    )

    assert status == 204 and org.statuses[-1] == 204
    (change,) = org.changes(after)
    assert change.header["changeType"] == "UPDATE"
    assert change.header["changedFields"] == ["Status", "LastModifiedDate"]
    assert change.header["changeOrigin"] == f"{REST_ORIGIN};client=web-to-lead"
    assert org.store.get_record("Lead", lead_id)["Status"] == "Working"


def test_delete_moves_the_record_to_the_recycle_bin_and_a_second_delete_is_a_404(org: Org) -> None:
    leads = sobject(org.client(), "Lead")
    lead_id = leads.create(web_lead())["id"]
    after = org.store.latest_replay()

    assert leads.delete(lead_id, headers=WEB_FORM) == 204

    (change,) = org.changes(after)
    assert (change.header["changeType"], change.header["recordIds"]) == ("DELETE", [lead_id])
    assert change.header["changeOrigin"] == f"{REST_ORIGIN};client=web-to-lead"
    assert org.store.get_record("Lead", lead_id) is None
    assert org.store.get_record("Lead", lead_id, include_deleted=True)["IsDeleted"] is True
    with pytest.raises(SalesforceResourceNotFound) as again:
        leads.delete(lead_id)
    assert again.value.status == 404
    assert again.value.content == [
        {"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}
    ]
    with pytest.raises(SalesforceResourceNotFound) as unknown:
        leads.delete("00Q5g0000009999AAA")
    assert unknown.value.content == [
        {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
    ]
    with pytest.raises(SalesforceResourceNotFound):
        leads.update(lead_id, {"Status": "Working"})  # deleted records are gone for PATCH too
    assert len(org.changes(after)) == 1


def test_task_and_email_message_creates(org: Org) -> None:
    sf = org.client()
    lead_id = sobject(sf, "Lead").create(web_lead())["id"]
    task = sobject(sf, "Task").create(
        {
            "Subject": "Email: hello",
            "WhoId": lead_id,
            "Status": "Completed",
            "IsClosed": True,
            "CompletedDateTime": "2024-05-01T10:00:00.000+0000",
            "ActivityDate": "2024-05-01",
            "TaskSubtype": "Email",
        }
    )
    emails = sobject(sf, "EmailMessage")
    with pytest.raises(SalesforceMalformedRequest) as no_status:
        emails.create({"Subject": "hello", "RelatedToId": lead_id})
    assert no_status.value.content == [
        {
            "message": "Required fields are missing: [Status]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Status"],
        }
    ]
    email = emails.create(
        {
            "Subject": "hello",
            "RelatedToId": lead_id,
            "ActivityId": task["id"],
            "Status": "3",
            "Incoming": False,
            "MessageDate": "2024-05-01T10:00:00Z",
            "ToAddress": "ada@example.com",
        }
    )

    assert task["success"] and email["success"]
    assert task["id"].startswith("00T") and email["id"].startswith("02s")
    task_event, email_event = org.changes()[-2:]
    assert (task_event.entity, email_event.entity) == ("Task", "EmailMessage")
    assert task_event.fields["CompletedDateTime"] == 1_714_557_600_000  # stored as epoch ms
    assert task_event.fields["OwnerId"] == INTEGRATION_USER_ID
    assert "OwnerId" not in email_event.fields  # EmailMessage has no owner
    assert email_event.fields["MessageDate"] == 1_714_557_600_000
    encode_change(task_event)
    encode_change(email_event)


# --- bad input -------------------------------------------------------------------------------


def _parser_error(expected: str, text: str) -> list[dict[str, Any]]:
    """Salesforce's answer to a JSON string where a field wants another type."""
    return [
        {
            "message": f'Cannot deserialize instance of {expected} from VALUE_STRING value "{text}" '
            "or request may be missing a required field",
            "errorCode": "JSON_PARSER_ERROR",
        }
    ]


BAD_CREATES = [
    pytest.param(
        web_lead(Foo="x"),
        [{"message": "No such column 'Foo' on sobject of type Lead", "errorCode": "INVALID_FIELD"}],
        id="unknown-field",
    ),
    pytest.param(
        {"LastName": "Lovelace"},
        [
            {
                "message": "Required fields are missing: [Company]",
                "errorCode": "REQUIRED_FIELD_MISSING",
                "fields": ["Company"],
            }
        ],
        id="missing-company",
    ),
    pytest.param(
        {"FirstName": "Ada", "Company": ""},
        [
            {
                "message": "Required fields are missing: [LastName, Company]",
                "errorCode": "REQUIRED_FIELD_MISSING",
                "fields": ["LastName", "Company"],
            }
        ],
        id="missing-both",
    ),
    pytest.param(
        web_lead(NumberOfEmployees="many"),
        _parser_error("int", "many"),
        id="string-for-int",
    ),
    pytest.param(
        web_lead(IsConverted="yes"),
        _parser_error("boolean", "yes"),
        id="string-for-boolean",
    ),
    pytest.param(
        web_lead(Owner_Assigned_At__c="yesterday"),
        _parser_error("datetime", "yesterday"),
        id="bad-datetime",
    ),
    pytest.param(
        web_lead(OwnerId="not-an-id"),
        [
            {
                "message": "OwnerId: id value of incorrect type: not-an-id",
                "errorCode": "MALFORMED_ID",
                "fields": ["OwnerId"],
            }
        ],
        id="malformed-reference",
    ),
    pytest.param(
        web_lead(CreatedDate="2024-01-01T00:00:00Z"),
        [
            {
                "message": "Unable to create/update fields: CreatedDate. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
                "fields": ["CreatedDate"],
            }
        ],
        id="read-only",
    ),
]


@pytest.mark.parametrize(("body", "errors"), BAD_CREATES)
def test_a_refused_create_gets_salesforces_errors_and_changes_nothing(
    org: Org, body: dict[str, Any], errors: list[dict[str, Any]]
) -> None:
    leads = sobject(org.client(), "Lead")
    leads.create(web_lead())
    before = (org.store.latest_replay(), len(org.store.query_records("Lead")))

    with pytest.raises(SalesforceMalformedRequest) as refused:
        leads.create(body, headers=WEB_FORM)

    assert refused.value.status == 400 and org.statuses[-1] == 400
    assert refused.value.content == errors
    assert (org.store.latest_replay(), len(org.store.query_records("Lead"))) == before


def test_a_refused_update_changes_nothing(org: Org) -> None:
    leads = sobject(org.client(), "Lead")
    lead_id = leads.create(web_lead())["id"]
    before = (org.store.latest_replay(), org.store.get_record("Lead", lead_id))

    with pytest.raises(SalesforceMalformedRequest) as unknown:
        leads.update(lead_id, {"Status": "Working", "Foo": 1})
    with pytest.raises(SalesforceMalformedRequest) as typed:
        leads.update(lead_id, {"Status": "Working", "AnnualRevenue": "lots"})

    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert typed.value.content[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert (org.store.latest_replay(), org.store.get_record("Lead", lead_id)) == before


@pytest.mark.parametrize("name", ["Account", "User"])
def test_unsupported_sobjects_are_not_found(org: Org, name: str) -> None:
    with pytest.raises(SalesforceResourceNotFound) as refused:
        sobject(org.client(), name).create({"Name": "Acme"})
    assert refused.value.content == [
        {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
    ]
    assert org.store.latest_replay() == 0
