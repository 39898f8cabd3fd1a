"""A sandbox org for auth and REST tests: SQLite store, token registry, REST server on loopback,
and a connected app whose certificate is a freshly generated self-signed RSA certificate.

The REST server speaks HTTPS by default, as a real org does: clients trust the sandbox's CA
(``SandboxOrg.http``, a CA-pinned session; ``REQUESTS_CA_BUNDLE=org.ca_file`` for a process
configured as for a real org), so the production TLS path is what these tests exercise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kpi_pipeline.adapters.auth.jwt import JWTTokenProvider
from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
from kpi_pipeline.adapters.salesforce.rest import SalesforceRest
from kpi_pipeline.sandbox.rest_server import (
    ConnectedApp,
    RunningRestServer,
    start_rest_server,
)
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID, SandboxStore
from kpi_pipeline.sandbox.tls import ca_pinned_session, certificate_builder, ensure_tls_files
from kpi_pipeline.sandbox.tokens import TokenRegistry

CONSUMER_KEY = "3MVG9sandbox.consumer.key"
USERNAME = "integration@kpi-sandbox.example"
STATIC_TOKEN = "00D000000000001AAA!static-test-token"
TENANT_ID = "00D000000000001AAA"


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@cache
def key_and_certificate() -> tuple[bytes, bytes]:
    """(private key PEM, self-signed certificate PEM), like a connected app's JWT setup."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpi_pipeline test")])
    now = dt.datetime.now(dt.UTC)
    cert = certificate_builder(
        name, name, key.public_key(), now - dt.timedelta(days=1), now + dt.timedelta(days=365)
    ).sign(key, hashes.SHA256())
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@cache
def other_private_key() -> bytes:
    """A key that does not match the connected app's certificate."""
    return _pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class SandboxOrg:
    store: SandboxStore
    server: RunningRestServer
    registry: TokenRegistry
    private_key_pem: bytes = field(repr=False)
    ca_file: str  # the CA that signed the server's certificate

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http(self) -> requests.Session:
        """A session that trusts exactly the org's CA."""
        return ca_pinned_session(self.ca_file)

    def jwt_provider(self, **kwargs: Any) -> JWTTokenProvider:
        kwargs.setdefault("private_key_pem", self.private_key_pem)
        kwargs.setdefault("http", self.http)
        return JWTTokenProvider(
            self.url,
            kwargs.pop("client_id", CONSUMER_KEY),
            kwargs.pop("username", USERNAME),
            **kwargs,
        )

    def static_provider(self, token: str = STATIC_TOKEN) -> StaticTokenProvider:
        return StaticTokenProvider(token, self.url, TENANT_ID)

    def rest(self, provider: Any = None, **kwargs: Any) -> SalesforceRest:
        kwargs.setdefault("sleep", lambda _s: None)
        kwargs.setdefault("session", self.http)
        return SalesforceRest(provider or self.static_provider(), **kwargs)

    def create_leads(self, count: int) -> list[str]:
        with self.store.transaction() as tx:
            return [
                self.store.create_record(
                    "Lead",
                    {
                        "FirstName": "Lead",
                        "LastName": f"No{i}",
                        "Company": f"Co {i}",
                        "Status": "Open",
                    },
                    user_id=INTEGRATION_USER_ID,
                    transaction=tx,
                )
                for i in range(count)
            ]

    def data_requests(self, suffix: str) -> list[Any]:
        """Requests the server received whose path ends with ``suffix``."""
        return [r for r in self.server.received if r.path.endswith(suffix)]


@contextmanager
def sandbox_org(tmp_path: Path, **server_kwargs: Any) -> Iterator[SandboxOrg]:
    """The org over HTTPS only: no test here needs a plaintext server."""
    private_pem, cert_pem = key_and_certificate()
    tls_files = ensure_tls_files(tmp_path / "tls")
    store = SandboxStore(tmp_path / "sandbox.db")
    registry = server_kwargs.pop("token_registry", None) or TokenRegistry(
        [STATIC_TOKEN], tenant_id=TENANT_ID
    )
    app = ConnectedApp(
        CONSUMER_KEY, certificate_pem=cert_pem, allowed_usernames={USERNAME: INTEGRATION_USER_ID}
    )
    server = start_rest_server(
        store,
        token_registry=registry,
        connected_app=app,
        tenant_id=TENANT_ID,
        integration_user_id=INTEGRATION_USER_ID,
        tls=tls_files,
        **server_kwargs,
    )
    try:
        yield SandboxOrg(store, server, registry, private_pem, str(tls_files.ca_file))
    finally:
        server.stop()
        store.close()


def patch_collection(
    org: SandboxOrg, records: list[dict], all_or_none: bool = False, **headers: str
):
    return org.http.patch(
        data_url(org, "composite/sobjects"),
        json={"allOrNone": all_or_none, "records": records},
        headers={**AUTH, **headers},
        timeout=5,
    )


def lead(record_id: str, **fields) -> dict:
    return {"attributes": {"type": "Lead"}, "id": record_id, **fields}


AUTH = {"Authorization": f"Bearer {STATIC_TOKEN}"}


def data_url(org: SandboxOrg, path: str, version: str = "64.0") -> str:
    return f"{org.url}/services/data/v{version}/{path}"


@pytest.fixture
def org(tmp_path: Path) -> Iterator[SandboxOrg]:
    """A sandbox org (SQLite store + REST server on an ephemeral loopback port) for this test."""
    with sandbox_org(tmp_path) as running:
        yield running
