"""Salesforce OAuth 2.0 JWT bearer flow with a token cache (an adapter; README, Architecture).

``JWTTokenProvider`` signs an RS256 assertion (``iss`` consumer key, ``sub`` username,
``aud`` login audience, ``exp`` now + 180 s), posts it to ``{login_url}/services/oauth2/token``
and caches the access token it gets back. Salesforce sends no ``expires_in`` and no refresh
token, so the cache trusts the configured session lifetime and mints a new assertion when the
token nears its end or when a caller reports ``INVALID_SESSION_ID`` through ``invalidate()``.

``StaticTokenProvider`` (``kpi_pipeline.adapters.auth.tokens``) wraps a token obtained
elsewhere. Both give the REST adapter ``token()`` and the Pub/Sub client ``metadata()``
(accesstoken, instanceurl, tenantid) plus ``invalidate()``. The fixes named in token errors are
in ``oauth_errors``, the signing key's loading in ``private_key``.

Secrets: the private key and the signed assertion never appear in logs, reprs or exception
messages; access tokens are hidden from reprs too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jwt as pyjwt
import requests

from kpi_pipeline.adapters.auth.oauth_errors import token_error
from kpi_pipeline.adapters.auth.private_key import load_private_key
from kpi_pipeline.adapters.auth.tokens import AccessToken, AuthError, PubSubMetadata, TokenStats
from kpi_pipeline.adapters.http_url import http_base_url
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 180  # Salesforce wants exp within a few minutes; simple-salesforce uses 3.
TOKEN_PATH = "/services/oauth2/token"


def default_audience(login_url: str) -> str:
    """The JWT ``aud`` Salesforce expects for a login URL.

    Salesforce accepts only its login servers (or an Experience Cloud site) as audience, so a
    My Domain host maps to login (production) or test (sandbox and scratch orgs). Any
    other host (Experience Cloud, the embedded sandbox) is its own audience.
    """
    host = (urlparse(login_url).hostname or "").lower()
    test_hosts = (".sandbox.my.salesforce.com", ".scratch.my.salesforce.com")
    if host.endswith(test_hosts) or host == "test.salesforce.com":
        return "https://test.salesforce.com"
    if host.endswith(".my.salesforce.com") or host == "login.salesforce.com":
        return "https://login.salesforce.com"
    return login_url.rstrip("/")


def tenant_id_from_identity_url(identity_url: str) -> tuple[str, str | None]:
    """(org id, user id) from the token response's ``id``: ``https://host/id/<orgId>/<userId>``."""
    parts = [p for p in urlparse(identity_url).path.split("/") if p]
    if "id" in parts:
        rest = parts[parts.index("id") + 1 :]
        if rest and rest[0].startswith("00D"):
            return rest[0], rest[1] if len(rest) > 1 else None
    raise AuthError(
        f"token response 'id' {identity_url!r} is not an identity URL of the form "
        "<host>/id/<orgId>/<userId>; the login URL may not be a Salesforce OAuth endpoint",
        error="bad_response",
    )


class JWTTokenProvider:
    """Access tokens through the JWT bearer flow, cached until ``expires_at - expiry_buffer_s``.

    Thread-safe: one lock guards the cache and a fetch, so concurrent callers that find the
    cache empty wait for a single token request instead of each sending one.
    """

    def __init__(
        self,
        login_url: str,
        client_id: str,
        username: str,
        private_key_pem: str | bytes | None = None,
        private_key_file: str | Path | None = None,
        *,
        audience: str | None = None,
        session_seconds: float = 7200,
        expiry_buffer_s: float = 60,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        http: requests.Session | None = None,
    ):
        self.login_url = http_base_url(
            login_url, "login_url", "such as https://login.salesforce.com"
        )
        if not client_id or not username:
            raise ValueError(
                "the JWT flow needs client_id (KPI_SALESFORCE_CLIENT_ID, the consumer key) and "
                "username (KPI_SALESFORCE_USERNAME)"
            )
        if session_seconds <= expiry_buffer_s:
            raise ValueError(
                f"session_seconds ({session_seconds}) must exceed expiry_buffer_s ({expiry_buffer_s}), "
                "or every call would fetch a new token"
            )
        self.client_id = client_id
        self.username = username
        self.audience = audience or default_audience(self.login_url)
        self._key = load_private_key(private_key_pem, private_key_file)
        self._key_file = private_key_file  # named in the error when the org refuses the key
        self.session_seconds = session_seconds
        self.expiry_buffer_s = expiry_buffer_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._http = http or requests.Session()
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self._hits = self._fetches = self._failures = 0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> JWTTokenProvider:
        """From ``kpi_pipeline.config.Settings`` (KPI_SALESFORCE_*)."""
        if not settings.uses_real_org:
            raise ValueError(
                "the JWT flow needs KPI_SALESFORCE_CLIENT_ID, KPI_SALESFORCE_USERNAME and "
                "KPI_SALESFORCE_PRIVATE_KEY_FILE; without them use the embedded sandbox"
            )
        kwargs.setdefault("session_seconds", settings.salesforce_session_seconds)
        return cls(
            settings.salesforce_login_url,
            settings.salesforce_client_id,
            settings.salesforce_username,
            private_key_file=settings.salesforce_private_key_file,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"JWTTokenProvider(login_url={self.login_url!r}, client_id={self.client_id!r}, "
            f"username={self.username!r}, audience={self.audience!r})"
        )

    # --- public API ---------------------------------------------------------------------

    def token(self) -> AccessToken:
        """A valid access token: the cached one, or a freshly fetched one."""
        with self._lock:
            cached = self._cached
            if cached is not None and self._clock() < cached.expires_at - self.expiry_buffer_s:
                self._hits += 1
                metrics.record_auth("hit")
                return cached
            return self._fetch_locked()

    def invalidate(self, stale_token: str | None = None) -> None:
        """Drop the cached token (Salesforce said INVALID_SESSION_ID).

        With ``stale_token`` only that token is dropped, so several callers reporting the same
        expired session cause one re-authentication, not one each.
        """
        with self._lock:
            if self._cached is None:
                return
            if stale_token is None or stale_token == self._cached.access_token:
                self._cached = None

    def metadata(self) -> PubSubMetadata:
        """Pub/Sub API call metadata (the Pub/Sub client's AuthProvider protocol)."""
        return self.token().pubsub_metadata()

    pubsub_metadata = metadata

    @property
    def stats(self) -> TokenStats:
        with self._lock:
            return TokenStats(self._hits, self._fetches, self._failures)

    # --- the token request ----------------------------------------------------------------

    def _assertion(self, now: float) -> str:
        claims = {
            "iss": self.client_id,
            "sub": self.username,
            "aud": self.audience,
            "exp": int(now) + ASSERTION_LIFETIME_S,
        }
        return pyjwt.encode(claims, self._key, algorithm="RS256")

    def _fetch_locked(self) -> AccessToken:
        now = self._clock()
        started = time.perf_counter()
        try:
            token = self._request_token(now)
        except AuthError:
            self._failures += 1
            metrics.record_auth("failure", time.perf_counter() - started)
            raise
        self._fetches += 1
        metrics.record_auth("success", time.perf_counter() - started)
        self._cached = token
        log.info(
            "Salesforce token fetched for %s (org %s, instance %s)",
            self.username,
            token.tenant_id,
            token.instance_url,
        )
        return token

    def _request_token(self, now: float) -> AccessToken:
        url = self.login_url + TOKEN_PATH
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion(now)}
        try:
            response = self._http.post(url, data=form, timeout=self.timeout_s)
        except requests.RequestException as exc:
            # The exception text names only the URL, never the form body.
            raise AuthError(
                f"cannot reach the Salesforce login URL {url}: {type(exc).__name__}; check "
                "KPI_SALESFORCE_LOGIN_URL and the network",
                error="unreachable",
            ) from None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise token_error(url, response.status_code, body, key_file=self._key_file)
        return self._token_from_body(body, now)

    def _token_from_body(self, body: dict[str, Any], now: float) -> AccessToken:
        instance_url = body.get("instance_url")
        if not instance_url or "id" not in body:
            raise AuthError(
                "token response lacks instance_url or id; the login URL is not a Salesforce OAuth "
                "endpoint",
                error="bad_response",
            )
        tenant_id, user_id = tenant_id_from_identity_url(str(body["id"]))
        return AccessToken(
            access_token=str(body["access_token"]),
            instance_url=str(instance_url).rstrip("/"),
            tenant_id=tenant_id,
            # No expires_in from Salesforce: the org's session timeout is configuration we know.
            expires_at=now + self.session_seconds,
            user_id=user_id,
        )


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
