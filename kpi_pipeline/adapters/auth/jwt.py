"""Salesforce OAuth 2.0 JWT bearer flow with a token cache (an adapter; README, Architecture).

``JWTTokenProvider`` signs an RS256 assertion (``iss`` consumer key, ``sub`` username,
``aud`` login audience, ``exp`` now + 180 s), posts it to ``{login_url}/services/oauth2/token``
and caches the access token it gets back. Salesforce sends no ``expires_in`` and no refresh
token, so the cache trusts the configured session lifetime and mints a new assertion when the
token nears its end or when a caller reports ``INVALID_SESSION_ID`` through ``invalidate()``.

``StaticTokenProvider`` wraps a token obtained elsewhere (the sandbox's static token, or a
session id an operator pasted in). Both give the REST adapter ``token()`` and the Pub/Sub
client ``metadata()`` (accesstoken, instanceurl, tenantid) plus ``invalidate()``.

Secrets: the private key and the signed assertion never appear in logs, reprs or exception
messages; access tokens are hidden from reprs too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import jwt as pyjwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 180  # Salesforce wants exp within a few minutes; simple-salesforce uses 3.
TOKEN_PATH = "/services/oauth2/token"

PubSubMetadata = tuple[tuple[str, str], ...]


class AuthError(RuntimeError):
    """Getting an access token failed. The message names the Salesforce error and the fix."""

    def __init__(self, message: str, *, error: str | None = None, description: str | None = None):
        super().__init__(message)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AccessToken:
    """One Salesforce session. ``expires_at`` is epoch seconds (inf when unknown/static)."""

    access_token: str = field(repr=False)
    instance_url: str
    tenant_id: str
    expires_at: float
    user_id: str | None = None

    def __post_init__(self) -> None:
        from kpi_pipeline.telemetry import logs

        logs.register_secret(self.access_token)  # whatever logs it later, never in clear

    def pubsub_metadata(self) -> PubSubMetadata:
        """gRPC metadata the Pub/Sub API wants on every call (lower-case keys)."""
        return (
            ("accesstoken", self.access_token),
            ("instanceurl", self.instance_url),
            ("tenantid", self.tenant_id),
        )


@dataclass(frozen=True, slots=True)
class TokenStats:
    hits: int
    fetches: int
    failures: int

    @property
    def calls(self) -> int:
        return self.hits + self.fetches + self.failures

    @property
    def hit_rate(self) -> float:
        """Share of ``token()`` calls served from the cache (0.0 before the first call)."""
        return self.hits / self.calls if self.calls else 0.0


class TokenProvider(Protocol):
    """What the REST adapter needs from an auth source."""

    def token(self) -> AccessToken: ...

    def invalidate(self, stale_token: str | None = None) -> None: ...


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


# Salesforce's terse token errors, and what to do about each (matched on error + description).
_FIXES: tuple[tuple[str, str, str], ...] = (
    (
        "invalid_grant",
        "user hasn't approved this consumer",
        "pre-authorize the user in the connected app: Manage > Edit Policies > Permitted Users = "
        "'Admin approved users are pre-authorized', then add the user's profile or a permission set",
    ),
    (
        "invalid_app_access",
        "",
        "pre-authorize the user in the connected app (Permitted Users = admin approved) and assign "
        "the user's profile or a permission set to the app",
    ),
    (
        "invalid_grant",
        "audience",
        "set the login URL to https://login.salesforce.com (production/My Domain) or "
        "https://test.salesforce.com (sandboxes): the JWT 'aud' is derived from it",
    ),
    (
        "invalid_grant",
        "expired authorization code",
        "sync this machine's clock (NTP): the assertion expires 180 s after signing and Salesforce "
        "saw it already expired",
    ),
    (
        "invalid_grant",
        "invalid assertion",
        "check that KPI_SALESFORCE_PRIVATE_KEY_FILE matches the certificate uploaded to the connected "
        "app and that this machine's clock is right (the assertion expires 180 s after signing)",
    ),
    (
        "invalid_grant",
        "user",
        "check KPI_SALESFORCE_USERNAME: the user must exist in this org (sandbox usernames carry a "
        "suffix) and be active",
    ),
    (
        "invalid_client_id",
        "",
        "set KPI_SALESFORCE_CLIENT_ID to the connected app's consumer key (Setup > App Manager > "
        "View > Manage Consumer Details); a new app can take minutes to become usable",
    ),
    (
        "invalid_client",
        "",
        "set KPI_SALESFORCE_CLIENT_ID to the connected app's consumer key",
    ),
    (
        "unsupported_grant_type",
        "",
        "point the login URL at a Salesforce OAuth server (login/test.salesforce.com or My Domain)",
    ),
)


def fix_for(error: str, description: str, *, key_file: str | Path | None = None) -> str:
    """The operator's fix for a Salesforce token error; ``key_file`` (the signing key's
    path) is named when the org could not verify the signature with the app's certificate."""
    if key_file is not None and error == "invalid_grant" and "invalid assertion" in description:
        return (
            f"the key file {str(key_file)!r} (KPI_SALESFORCE_PRIVATE_KEY_FILE) does not match the "
            "certificate uploaded to the connected app: upload the certificate of that key to the "
            "app (App Manager > Edit > Use digital signatures), or point "
            "KPI_SALESFORCE_PRIVATE_KEY_FILE at the key the uploaded certificate was made from; "
            "if they match, sync this machine's clock (the assertion expires 180 s after signing)"
        )
    for code, fragment, fix in _FIXES:
        if error == code and fragment in description.lower():
            return fix
    return "see Salesforce's OAuth error reference; check the connected app, user and key"


def load_private_key(
    private_key_pem: str | bytes | None = None, private_key_file: str | Path | None = None
) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM text or a PEM file. Errors never echo key material."""
    if (private_key_pem is None) == (private_key_file is None):
        raise ValueError("give exactly one of private_key_pem or private_key_file for the JWT flow")
    source = "private_key_pem"
    if private_key_file is not None:
        source = f"private key file {str(private_key_file)!r}"
        try:
            private_key_pem = Path(private_key_file).read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read {source}: {exc.strerror}; set KPI_SALESFORCE_PRIVATE_KEY_FILE to the PEM "
                "key matching the connected app's certificate"
            ) from None
    data = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # `from None`: the underlying error could quote parts of the input.
        raise ValueError(
            f"{source} is not an unencrypted PEM private key; export it with "
            "`openssl rsa -in key.pem -out key.unencrypted.pem`"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{source} is not an RSA key; Salesforce's JWT flow needs RS256 (RSA)")
    return key


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
        if not login_url.startswith(("https://", "http://")):
            raise ValueError(
                f"login_url {login_url!r} must be an http(s) URL such as https://login.salesforce.com"
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
        self.login_url = login_url.rstrip("/")
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
            raise _token_error(url, response.status_code, body, key_file=self._key_file)
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


def _token_error(
    url: str, status: int, body: Any, *, key_file: str | Path | None = None
) -> AuthError:
    if isinstance(body, dict) and "error" in body:
        error = str(body.get("error"))
        description = str(body.get("error_description") or "")
        return AuthError(
            f"Salesforce refused the JWT bearer token request ({error}: {description}); fix: "
            f"{fix_for(error, description, key_file=key_file)}",
            error=error,
            description=description,
        )
    return AuthError(
        f"unexpected token response from {url} (HTTP {status}, no OAuth error body); check "
        "KPI_SALESFORCE_LOGIN_URL points at a Salesforce login server",
        error="bad_response",
    )


class StaticTokenProvider:
    """A token obtained elsewhere. It cannot be renewed: ``invalidate()`` only counts."""

    def __init__(self, access_token: str, instance_url: str, tenant_id: str):
        if not access_token:
            raise ValueError("StaticTokenProvider needs a non-empty access token")
        if not instance_url.startswith(("https://", "http://")):
            raise ValueError(f"instance_url {instance_url!r} must be an http(s) URL")
        self._token = AccessToken(access_token, instance_url.rstrip("/"), tenant_id, float("inf"))
        self._lock = threading.Lock()
        self._hits = 0
        self.invalidations = 0

    def __repr__(self) -> str:
        return f"StaticTokenProvider(instance_url={self._token.instance_url!r}, tenant_id={self._token.tenant_id!r})"

    def token(self) -> AccessToken:
        with self._lock:
            self._hits += 1
        return self._token

    def invalidate(self, stale_token: str | None = None) -> None:
        # Nothing to refresh; callers retry once and then report the rejected token.
        with self._lock:
            self.invalidations += 1

    def metadata(self) -> PubSubMetadata:
        return self._token.pubsub_metadata()

    pubsub_metadata = metadata

    @property
    def stats(self) -> TokenStats:
        with self._lock:
            return TokenStats(self._hits, 0, 0)
