"""Access tokens of the embedded sandbox org, shared by its REST and Pub/Sub servers.

The REST server's JWT endpoint issues tokens here; both servers check them with
``is_valid`` (the Pub/Sub server takes ``token_validator=registry.is_valid``). Static tokens
(``kpi-pipeline sandbox serve --access-token``) are accepted beside issued ones. Sessions
end ``session_seconds`` after issue, like an org's session timeout; ``expire_all`` is the
"sessions expired" fault.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    issued_at: float
    expires_at: float


class TokenRegistry:
    """Issued and static access tokens; thread-safe."""

    def __init__(
        self,
        static_tokens: Iterable[str] = (),
        session_seconds: float = 7200,
        clock: Callable[[], float] = time.time,
        *,
        tenant_id: str = "00D000000000001AAA",
    ):
        if session_seconds <= 0:
            raise ValueError(f"session_seconds must be positive, got {session_seconds}")
        self.session_seconds = session_seconds
        self.tenant_id = tenant_id
        self._clock = clock
        self._lock = threading.Lock()
        self._static = {t for t in static_tokens if t}
        self._sessions: dict[str, Session] = {}

    def __repr__(self) -> str:  # never list the tokens themselves
        with self._lock:
            return f"TokenRegistry(static={len(self._static)}, sessions={len(self._sessions)})"

    def issue(self, username: str) -> str:
        """A new session token for ``username``, shaped like Salesforce's ``<orgId>!<secret>``."""
        token = f"{self.tenant_id}!{secrets.token_urlsafe(48)}"
        now = self._clock()
        with self._lock:
            self._sessions[token] = Session(username, now, now + self.session_seconds)
        return token

    def is_valid(self, token: str) -> bool:
        """True for a static token or an issued, unexpired, unrevoked session."""
        if not token:
            return False
        with self._lock:
            if token in self._static:
                return True
            session = self._sessions.get(token)
            if session is None:
                return False
            if self._clock() >= session.expires_at:
                del self._sessions[token]  # expired sessions never come back
                return False
            return True

    def username_for(self, token: str) -> str | None:
        """The username a valid issued token belongs to (None for static or invalid tokens)."""
        with self._lock:
            session = self._sessions.get(token)
        if session is None or not self.is_valid(token):
            return None
        return session.username

    def expire_all(self, *, include_static: bool = False) -> int:
        """Fault: every issued session ends now (static tokens too if asked). Returns how many."""
        with self._lock:
            count = len(self._sessions)
            self._sessions.clear()
            if include_static:
                count += len(self._static)
                self._static.clear()
            return count

    @property
    def issued_count(self) -> int:
        """Live issued sessions (expired ones are removed when next checked)."""
        with self._lock:
            return len(self._sessions)
