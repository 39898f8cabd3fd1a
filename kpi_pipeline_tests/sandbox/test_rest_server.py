"""The sandbox REST server over raw HTTP: Salesforce's shapes, status codes and faults."""

from __future__ import annotations

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from kpi_pipeline.sandbox.rest_server import ConnectedApp, derived_user_id
from kpi_pipeline.sandbox.rest_server.soql import parse_soql
from kpi_pipeline_tests.support.sandbox_org import (
    AUTH,
    CONSUMER_KEY,
    STATIC_TOKEN,
    SandboxOrg,
    data_url,
    key_and_certificate,
    lead,
    patch_collection,
    sandbox_org,
)

# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": STATIC_TOKEN}]
)
def test_data_endpoints_want_a_valid_bearer_token(org: SandboxOrg, headers: dict) -> None:
    response = org.http.get(
        data_url(org, "query"), params={"q": "SELECT Id FROM Lead"}, headers=headers, timeout=5
    )
    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]


def test_expired_sessions_are_refused_but_static_token_still_works(org: SandboxOrg) -> None:
    token = org.jwt_provider().token().access_token
    url = data_url(org, "query")
    params = {"q": "SELECT Id FROM Lead"}
    assert org.http.get(
        url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5
    ).ok
    assert org.server.faults.expire_sessions() == 1
    assert (
        org.http.get(
            url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).status_code
        == 401
    )
    assert org.http.get(url, params=params, headers=AUTH, timeout=5).ok


# --- sObject Collections -------------------------------------------------------------------------


def test_save_results_in_request_order_failures_without_id(org: SandboxOrg) -> None:
    a, b = org.create_leads(2)
    org.server.faults.lock_rows([b])
    response = patch_collection(
        org,
        [
            lead(a, Routing_Rule__c="r"),
            lead(b, Routing_Rule__c="r"),
            lead("00Q5g0000009999AAA", Routing_Rule__c="r"),
            lead("bad-id", Routing_Rule__c="r"),
            {"id": a, "Routing_Rule__c": "r"},
            lead(a, LastModifiedDate="2024-01-01T00:00:00Z"),
        ],
    )
    assert response.status_code == 200
    results = response.json()
    assert results[0] == {"id": a, "success": True, "errors": []}
    codes = [r["errors"][0]["statusCode"] for r in results[1:]]
    assert codes == [
        "UNABLE_TO_LOCK_ROW",
        "INVALID_CROSS_REFERENCE_KEY",
        "MALFORMED_ID",
        "INVALID_TYPE",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
    ]
    assert all("id" not in r and r["success"] is False for r in results[1:])
    assert results[5]["errors"][0]["fields"] == ["LastModifiedDate"]


def test_all_or_none_rolls_everything_back(org: SandboxOrg) -> None:
    (a,) = org.create_leads(1)
    response = patch_collection(
        org,
        [lead(a, Routing_Rule__c="r"), lead("00Q5g0000009999AAA", Routing_Rule__c="r")],
        all_or_none=True,
    )
    results = response.json()
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "INVALID_CROSS_REFERENCE_KEY",
    ]
    assert org.store.get_record("Lead", a).get("Routing_Rule__c") is None


def test_more_than_200_records_is_a_400(org: SandboxOrg) -> None:
    response = patch_collection(org, [lead("00Q5g0000009999AAA")] * 201)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_malformed_body_is_a_400(org: SandboxOrg) -> None:
    url = data_url(org, "composite/sobjects")
    unauthenticated = org.http.patch(url, data=b"{not json", timeout=5)
    assert unauthenticated.status_code == 401  # authentication is checked first
    response = org.http.patch(url, data=b"{not json", headers=AUTH, timeout=5)
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    response = org.http.patch(url, json={"records": "x"}, headers=AUTH, timeout=5)
    assert response.status_code == 400


def test_change_origin_names_the_calling_client_and_version(org: SandboxOrg) -> None:
    a, b = org.create_leads(2)
    patch_collection(
        org,
        [lead(a, Routing_Rule__c="x")],
        **{"Sforce-Call-Options": "client=router, defaultNamespace=ns"},
    )
    org.http.patch(
        data_url(org, f"sobjects/Lead/{b}", "63.0"),
        json={"Routing_Rule__c": "y"},
        headers=AUTH,
        timeout=5,
    )
    origins = {
        c.header["recordIds"][0]: c.header["changeOrigin"]
        for c in org.store.iter_changes()
        if c.header["changeType"] == "UPDATE"
    }
    assert origins == {
        a: "com/salesforce/api/rest/64.0;client=router",
        b: "com/salesforce/api/rest/63.0",
    }


# --- single records ------------------------------------------------------------------------------


def test_single_record_get_and_patch(org: SandboxOrg) -> None:
    (a,) = org.create_leads(1)
    url = data_url(org, f"sobjects/Lead/{a}")
    response = org.http.patch(
        url, json={"First_Response_At__c": "2024-05-01T10:00:00.000+0000"}, headers=AUTH, timeout=5
    )
    assert response.status_code == 204 and response.content == b""
    body = org.http.get(
        url, params={"fields": "Id,First_Response_At__c,FirstName"}, headers=AUTH, timeout=5
    ).json()
    assert body == {
        "attributes": {"type": "Lead", "url": f"/services/data/v64.0/sobjects/Lead/{a}"},
        "Id": a,
        "First_Response_At__c": "2024-05-01T10:00:00.000Z",
        "FirstName": "Lead",
    }
    missing = org.http.get(
        data_url(org, "sobjects/Lead/00Q5g0000009999AAA"), headers=AUTH, timeout=5
    )
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"
    bad = org.http.patch(
        data_url(org, "sobjects/Lead/00Q5g0000009999AAA"),
        json={"Status": "x"},
        headers=AUTH,
        timeout=5,
    )
    # Like Salesforce: an unknown id on the record's own URL is a missing resource.
    assert bad.status_code == 404
    assert bad.json() == [
        {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
    ]


def test_unknown_paths_methods_and_limit_header(org: SandboxOrg) -> None:
    response = org.http.get(data_url(org, "sobjects/Lead/describe/extra"), headers=AUTH, timeout=5)
    assert response.status_code == 404
    response = org.http.delete(data_url(org, "composite/sobjects"), headers=AUTH, timeout=5)
    assert response.status_code == 405 and response.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"
    response = org.http.get(
        data_url(org, "query"), params={"q": "SELECT Id FROM Lead"}, headers=AUTH, timeout=5
    )
    assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")


# --- query -------------------------------------------------------------------------------------


def test_query_shapes_limit_order_and_unknown_types(org: SandboxOrg) -> None:
    ids = org.create_leads(3)
    q = "select id, company from Lead where LastModifiedDate >= 2020-01-01T00:00:00Z order by LastModifiedDate desc limit 2"
    body = org.http.get(data_url(org, "query"), params={"q": q}, headers=AUTH, timeout=5).json()
    assert body["totalSize"] == 2 and body["done"] is True
    # One transaction: equal LastModifiedDate, so the tie breaks on Id (descending here).
    assert [r["Id"] for r in body["records"]] == [ids[2], ids[1]]
    assert set(body["records"][0]) == {"attributes", "Id", "Company"}
    response = org.http.get(
        data_url(org, "query"), params={"q": "SELECT Id FROM Opportunity"}, headers=AUTH, timeout=5
    )
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_TYPE"


def test_query_locators_page_and_close_after_the_last_page(tmp_path) -> None:
    with sandbox_org(tmp_path, query_batch_size=2) as org:
        org.create_leads(5)
        first = org.http.get(
            data_url(org, "query"), params={"q": "SELECT Id FROM Lead"}, headers=AUTH, timeout=5
        ).json()
        assert (first["totalSize"], len(first["records"]), first["done"]) == (5, 2, False)
        pages = [first]
        while not pages[-1]["done"]:
            url = org.url + pages[-1]["nextRecordsUrl"]
            pages.append(org.http.get(url, headers=AUTH, timeout=5).json())
        assert [len(p["records"]) for p in pages] == [2, 2, 1]
        assert "nextRecordsUrl" not in pages[-1]
        reused = org.http.get(org.url + first["nextRecordsUrl"], headers=AUTH, timeout=5)
        assert (
            reused.status_code == 400 and reused.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"
        )


def test_request_log_is_bounded(tmp_path) -> None:
    with sandbox_org(tmp_path, keep_requests=3) as org:
        for _ in range(5):
            org.http.get(
                data_url(org, "query"), params={"q": "SELECT Id FROM Lead"}, headers=AUTH, timeout=5
            )
        assert len(org.server.received) == 3


@pytest.mark.parametrize(
    ("soql", "named"),
    [
        ("SELECT COUNT() FROM Lead", "COUNT()"),
        ("SELECT Owner.Name FROM Lead", "Owner.Name"),
        ("SELECT Id FROM Lead WHERE Status = 'Open'", "Status = 'Open'"),
        ("SELECT Id FROM Lead WHERE LastModifiedDate >= 2024-01-01", "2024-01-01"),
        ("SELECT Id FROM Lead WHERE Id IN (SELECT WhoId FROM Task)", "IN list item"),
        ("SELECT Id FROM Lead ORDER BY Company", "Company"),
        ("DELETE FROM Lead", "unsupported query"),
    ],
)
def test_unsupported_soql_names_the_part(org: SandboxOrg, soql: str, named: str) -> None:
    response = org.http.get(data_url(org, "query"), params={"q": soql}, headers=AUTH, timeout=5)
    assert response.status_code == 400
    (error,) = response.json()
    assert error["errorCode"] == "MALFORMED_QUERY" and named in error["message"]


def test_parse_soql_accepts_the_pipelines_subset() -> None:
    q = parse_soql(
        "SELECT Id, Status FROM Lead WHERE Id IN ('00Q000000000001AAA', '00Q000000000002AAA')"
    )
    assert q.sobject == "Lead" and q.fields == ("Id", "Status")
    assert q.ids == ("00Q000000000001AAA", "00Q000000000002AAA")
    q = parse_soql(
        "SELECT Id FROM Task WHERE LastModifiedDate >= 2024-05-01T10:00:00Z "
        "AND LastModifiedDate < 2024-05-01T11:00:00+01:00 ORDER BY LastModifiedDate LIMIT 10"
    )
    assert (q.since_ms, q.until_ms) == (1714557600000, 1714557600000)
    assert q.order_desc is False and q.limit == 10


# --- faults and configuration ---------------------------------------------------------------------


def test_fail_next_requests_after_some_pass(org: SandboxOrg) -> None:
    url = data_url(org, "query")
    params = {"q": "SELECT Id FROM Lead"}
    org.server.faults.fail_next_requests(1, after=1)
    assert org.http.get(url, params=params, headers=AUTH, timeout=5).status_code == 200
    failed = org.http.get(url, params=params, headers=AUTH, timeout=5)
    assert failed.status_code == 500 and failed.json()[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    org.server.faults.fail_next_requests(1, drop_connection=True)
    with pytest.raises(requests.ConnectionError):
        org.http.get(url, params=params, headers=AUTH, timeout=5)
    assert org.http.get(url, params=params, headers=AUTH, timeout=5).status_code == 200


def test_connected_app_keys() -> None:
    private_pem, cert_pem = key_and_certificate()
    public_pem = (
        serialization.load_pem_private_key(private_pem, None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert ConnectedApp(CONSUMER_KEY, public_key_pem=public_pem).public_key().public_numbers() == (
        ConnectedApp(CONSUMER_KEY, certificate_pem=cert_pem).public_key().public_numbers()
    )
    with pytest.raises(ValueError, match="exactly one"):
        ConnectedApp(CONSUMER_KEY).public_key()
    with pytest.raises(ValueError, match=r"not a PEM X\.509 certificate"):
        ConnectedApp(CONSUMER_KEY, certificate_pem="garbage").public_key()
    app = ConnectedApp(CONSUMER_KEY, certificate_pem=cert_pem, allowed_usernames=["a@example.com"])
    assert app.user_id_for("a@example.com") == derived_user_id("a@example.com")
    assert len(derived_user_id("a@example.com")) == 18 and app.user_id_for("b@example.com") is None
