"""JWT bearer flow against the sandbox REST server's token endpoint (real HTTP on loopback)."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import pytest

from kpi_pipeline.adapters.auth.jwt import (
    JWTTokenProvider,
    default_audience,
    tenant_id_from_identity_url,
)
from kpi_pipeline.adapters.auth.tokens import AuthError, StaticTokenProvider
from kpi_pipeline.config import Settings
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID
from kpi_pipeline.telemetry import metrics
from kpi_pipeline_tests.support.sandbox_org import (
    CONSUMER_KEY,
    TENANT_ID,
    USERNAME,
    SandboxOrg,
    other_private_key,
    sandbox_org,
)


class FakeClock:
    """A controlled clock: the test decides what time it is."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now


def token_requests(org: SandboxOrg) -> int:
    return len(org.data_requests("/services/oauth2/token"))


def auth_count(result: str) -> float:
    return metrics.sample_value("auth_requests_total", {"result": result})


# --- the cache ---------------------------------------------------------------------------


def test_token_is_fetched_once_and_reused_until_near_expiry(tmp_path: Path) -> None:
    clock = FakeClock()  # one clock for client and server, as NTP would give them
    with sandbox_org(tmp_path, clock=clock) as org:
        _check_cache_lifetime(org, clock)


def _check_cache_lifetime(org: SandboxOrg, clock: FakeClock) -> None:
    provider = org.jwt_provider(clock=clock, session_seconds=7200, expiry_buffer_s=60)

    first = provider.token()
    for _ in range(99):
        assert provider.token() is first
    assert token_requests(org) == 1
    assert provider.stats.fetches == 1 and provider.stats.hits == 99
    assert provider.stats.hit_rate == pytest.approx(0.99)

    clock.now = first.expires_at - 61  # still outside the buffer: cached
    assert provider.token() is first
    clock.now = first.expires_at - 59  # inside the buffer: a new assertion, a new session
    second = provider.token()
    assert second.access_token != first.access_token
    assert token_requests(org) == 2
    assert org.registry.is_valid(second.access_token)


def test_token_carries_instance_tenant_and_user_from_the_response(org: SandboxOrg) -> None:
    token = org.jwt_provider().token()
    assert token.instance_url == org.url
    assert token.tenant_id == TENANT_ID
    assert token.user_id == INTEGRATION_USER_ID
    assert org.registry.username_for(token.access_token) == USERNAME


def test_metadata_for_the_pubsub_client(org: SandboxOrg) -> None:
    provider = org.jwt_provider()
    metadata = provider.metadata()
    assert [k for k, _ in metadata] == ["accesstoken", "instanceurl", "tenantid"]
    assert dict(metadata)["accesstoken"] == provider.token().access_token
    assert dict(metadata)["instanceurl"] == org.url
    assert dict(metadata)["tenantid"] == TENANT_ID
    assert provider.pubsub_metadata() == metadata


def test_invalidate_drops_only_the_stale_token(org: SandboxOrg) -> None:
    provider = org.jwt_provider()
    first = provider.token()
    provider.invalidate("some-older-token")  # another caller's report about an old session
    assert provider.token() is first
    provider.invalidate(first.access_token)
    second = provider.token()
    assert second.access_token != first.access_token
    provider.invalidate()
    assert provider.token().access_token != second.access_token
    assert provider.stats.fetches == 3


def test_concurrent_callers_share_one_fetch(org: SandboxOrg) -> None:
    provider = org.jwt_provider()
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def call() -> None:
        barrier.wait()
        for _ in range(50):
            seen.append(provider.token().access_token)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1
    assert provider.stats.fetches == 1 and provider.stats.hits == 399
    assert token_requests(org) == 1


def test_auth_metrics_count_hits_successes_and_failures(org: SandboxOrg) -> None:
    before = {r: auth_count(r) for r in ("hit", "success", "failure")}
    provider = org.jwt_provider()
    provider.token()
    provider.token()
    with pytest.raises(AuthError):
        org.jwt_provider(username="nobody@example.com").token()
    assert auth_count("success") - before["success"] == 1
    assert auth_count("hit") - before["hit"] == 1
    assert auth_count("failure") - before["failure"] == 1


# --- refusals in Salesforce's shape ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "description", "fix_words"),
    [
        (
            {"private_key_pem": other_private_key()},
            "invalid_grant",
            "invalid assertion",
            "certificate",
        ),
        (
            {"client_id": "not-our-app"},
            "invalid_client_id",
            "client identifier invalid",
            "consumer key",
        ),
        ({"clock_offset": -3600}, "invalid_grant", "expired authorization code", "clock"),
        ({"clock_offset": 3600}, "invalid_grant", "invalid assertion", "clock"),
        (
            {"audience": "https://login.salesforce.com"},
            "invalid_grant",
            "audience is invalid",
            "login URL",
        ),
        (
            {"username": "stranger@example.com"},
            "invalid_grant",
            "user hasn't approved this consumer",
            "pre-authorize",
        ),
    ],
)
def test_sandbox_refuses_bad_assertions_with_salesforce_errors(
    org: SandboxOrg, change: dict, error: str, description: str, fix_words: str
) -> None:
    change = dict(change)
    offset = change.pop("clock_offset", 0)
    provider = org.jwt_provider(clock=lambda: time.time() + offset, **change)
    with pytest.raises(AuthError) as raised:
        provider.token()
    assert raised.value.error == error
    assert raised.value.description == description
    assert error in str(raised.value) and fix_words in str(raised.value)
    assert provider.stats.failures == 1 and provider.stats.fetches == 0
    assert org.registry.issued_count == 0


def test_refusal_body_is_exactly_salesforces_shape(org: SandboxOrg) -> None:
    response = org.http.post(
        org.url + "/services/oauth2/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": "not.a.jwt",
        },
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_grant", "error_description": "invalid assertion"}
    response = org.http.post(
        org.url + "/services/oauth2/token", data={"grant_type": "password"}, timeout=5
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_success_body_has_salesforces_fields(org: SandboxOrg) -> None:
    assertion = org.jwt_provider()._assertion(time.time())
    response = org.http.post(
        org.url + "/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "access_token",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
    }
    assert body["token_type"] == "Bearer"
    assert body["id"] == f"{org.url}/id/{TENANT_ID}/{INTEGRATION_USER_ID}"
    assert "expires_in" not in body  # why the provider relies on the configured session lifetime


def test_unreachable_login_url_is_a_clear_auth_error(org: SandboxOrg) -> None:
    provider = org.jwt_provider()
    provider.login_url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(
        AuthError, match=re.escape("cannot reach the Salesforce login URL http://127.0.0.1:9")
    ):
        provider.token()


# --- secrets -----------------------------------------------------------------------------------


def test_private_key_and_assertion_never_leak(
    org: SandboxOrg, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    sent_bodies: list[str] = []
    http = org.http
    http.hooks["response"].append(lambda r, *a, **k: sent_bodies.append(str(r.request.body)))
    provider = org.jwt_provider(http=http)
    token = provider.token()
    bad = org.jwt_provider(http=http, username="stranger@example.com")
    with pytest.raises(AuthError) as refused:
        bad.token()

    key_lines = [
        line for line in org.private_key_pem.decode().splitlines() if "PRIVATE KEY" not in line
    ]
    assertions = [b.split("assertion=")[1] for b in sent_bodies]
    assert len(assertions) == 2 and all(len(a) > 100 for a in assertions)
    secrets = [*key_lines[:3], *assertions, token.access_token]
    texts = [
        caplog.text,
        repr(provider),
        repr(bad),
        str(refused.value),
        repr(refused.value),
        repr(token),
    ]
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_bad_key_file_errors_name_the_file_not_the_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"cannot read private key file .*missing\.pem"):
        JWTTokenProvider(
            "https://login.salesforce.com", CONSUMER_KEY, USERNAME, private_key_file=missing
        )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError) as raised:
        JWTTokenProvider(
            "https://login.salesforce.com", CONSUMER_KEY, USERNAME, private_key_file=garbage
        )
    assert "garbage.pem" in str(raised.value) and "SECRETSECRET" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_constructor_rejects_bad_configuration() -> None:
    key = other_private_key()
    with pytest.raises(ValueError, match="login_url"):
        JWTTokenProvider("login.salesforce.com", CONSUMER_KEY, USERNAME, private_key_pem=key)
    with pytest.raises(ValueError, match="KPI_SALESFORCE_CLIENT_ID"):
        JWTTokenProvider("https://login.salesforce.com", "", USERNAME, private_key_pem=key)
    with pytest.raises(ValueError, match="exactly one"):
        JWTTokenProvider("https://login.salesforce.com", CONSUMER_KEY, USERNAME)
    with pytest.raises(ValueError, match="session_seconds"):
        JWTTokenProvider(
            "https://login.salesforce.com",
            CONSUMER_KEY,
            USERNAME,
            private_key_pem=key,
            session_seconds=30,
        )


# --- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login_url", "audience"),
    [
        ("https://login.salesforce.com", "https://login.salesforce.com"),
        ("https://test.salesforce.com/", "https://test.salesforce.com"),
        ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
        ("https://fun-dog-1234.scratch.my.salesforce.com", "https://test.salesforce.com"),
        ("https://acme.my.site.com/partners", "https://acme.my.site.com/partners"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_default_audience(login_url: str, audience: str) -> None:
    assert default_audience(login_url) == audience


def test_identity_url_parsing() -> None:
    assert tenant_id_from_identity_url(
        "https://login.salesforce.com/id/00Dxx0000001gEREAY/005xx000001Sv6AAAS"
    ) == (
        "00Dxx0000001gEREAY",
        "005xx000001Sv6AAAS",
    )
    with pytest.raises(AuthError, match="not an identity URL"):
        tenant_id_from_identity_url("https://example.com/whoami")


def test_from_settings_uses_the_configured_org(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_bytes(other_private_key())
    settings = Settings(
        salesforce_login_url="https://acme.my.salesforce.com",
        salesforce_client_id=CONSUMER_KEY,
        salesforce_username=USERNAME,
        salesforce_private_key_file=key_file,
        salesforce_session_seconds=900,
    )
    provider = JWTTokenProvider.from_settings(settings)
    assert (provider.login_url, provider.audience) == (
        "https://acme.my.salesforce.com",
        "https://login.salesforce.com",
    )
    assert provider.session_seconds == 900
    with pytest.raises(ValueError, match="KPI_SALESFORCE_CLIENT_ID"):
        JWTTokenProvider.from_settings(Settings(salesforce_client_id=None))


def test_static_provider_gives_metadata_and_cannot_renew() -> None:
    provider = StaticTokenProvider("tok", "https://acme.my.salesforce.com/", "00D000000000001AAA")
    assert provider.metadata() == (
        ("accesstoken", "tok"),
        ("instanceurl", "https://acme.my.salesforce.com"),
        ("tenantid", "00D000000000001AAA"),
    )
    provider.invalidate("tok")
    assert provider.token().access_token == "tok" and provider.invalidations == 1
    assert "tok" not in repr(provider) and "tok" not in repr(provider.token())
    with pytest.raises(ValueError, match="instance_url"):
        StaticTokenProvider("tok", "acme.my.salesforce.com", "00D")


def test_a_key_that_does_not_match_the_apps_certificate_names_the_file_to_fix(
    org: SandboxOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS, configured as for a real org: a signing key whose certificate the connected
    app does not hold is refused; the error names the key file and the fix, the provider
    and the org probe behind `kpi-pipeline status --probe-org` report it without crashing,
    and the matching key passes the same probe."""
    from kpi_pipeline import wiring

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", org.ca_file)  # trust the org, as for a real one
    wrong, right = tmp_path / "wrong.key", tmp_path / "right.key"
    wrong.write_bytes(other_private_key())
    right.write_bytes(org.private_key_pem)

    def settings(key_file: Path) -> Settings:
        return Settings(
            salesforce_login_url=org.url,
            salesforce_client_id=CONSUMER_KEY,
            salesforce_username=USERNAME,
            salesforce_private_key_file=key_file,
            data_dir=tmp_path / "data",
        )

    with pytest.raises(AuthError) as refused:
        JWTTokenProvider.from_settings(settings(wrong)).token()
    message = str(refused.value)
    assert refused.value.error == "invalid_grant"
    assert str(wrong) in message and "KPI_SALESFORCE_PRIVATE_KEY_FILE" in message
    assert "upload the certificate of that key" in message
    assert "-----BEGIN" not in message  # never key material

    probe = wiring.probe_org(settings(wrong))
    assert (probe.ok, probe.problem) == (False, "org_auth_failed")
    assert str(wrong) in probe.detail and "connected app" in probe.detail
    assert wiring.probe_org(settings(right)).ok
