"""Access tokens and their providers' common shape (an adapter): ``AccessToken``, the
``TokenProvider`` protocol the REST adapter needs, ``TokenStats``, ``AuthError``, and
``StaticTokenProvider`` for a token obtained elsewhere (the sandbox's static token, or a
session id an operator pasted in). The JWT bearer flow is ``kpi_pipeline.adapters.auth.jwt``.

Access tokens never appear in reprs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from kpi_pipeline.adapters.http_url import http_base_url

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


class StaticTokenProvider:
    """A token obtained elsewhere. It cannot be renewed: ``invalidate()`` only counts."""

    def __init__(self, access_token: str, instance_url: str, tenant_id: str):
        if not access_token:
            raise ValueError("StaticTokenProvider needs a non-empty access token")
        base = http_base_url(instance_url, "instance_url", "(the org's My Domain URL)")
        self._token = AccessToken(access_token, base, tenant_id, float("inf"))
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
