"""The REST adapter's HTTP (an adapter helper): a simple-salesforce client per access token,
one call with re-authentication once on 401 and bounded exponential backoff on limits and
outages. ``SalesforceRest`` builds one and sends every request through it."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError as SimpleSalesforceError,
)
from simple_salesforce.exceptions import SalesforceExpiredSession

from kpi_pipeline.adapters.auth.tokens import AuthError, TokenProvider
from kpi_pipeline.adapters.salesforce.rest_errors import classify, is_daily_limit
from kpi_pipeline.core.salesforce_rest import (
    SalesforceError,
    SalesforceUnavailableError,
    SessionInvalidError,
    UpdateReport,
)
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)


class RestTransport:
    """REST calls with the current token; safe to share between threads."""

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        api_version: str,
        client_id: str,
        auto_assign: bool,
        session: requests.Session,
        max_attempts: int,
        base_backoff_s: float,
        max_backoff_s: float,
        timeout_s: float,
        sleep: Callable[[float], None],
        rng: random.Random,
    ) -> None:
        self.tokens = tokens
        self.api_version = api_version
        self.client_id = client_id
        self.auto_assign = auto_assign
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._session = session
        self._sleep = sleep
        self._rng = rng
        self._lock = threading.Lock()
        self._client: Salesforce | None = None
        self._client_token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        *,
        counter: UpdateReport | None = None,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One REST call with re-auth once on 401 and bounded backoff on limits and outages.

        ``idempotent=False``: outages (5xx, dropped connections) are not retried, because the
        org may have acted before the response was lost; limit refusals still are.
        """
        reauthenticated = False
        failures = 0
        while True:
            sf, token = self._salesforce()
            if counter is not None:
                counter.attempts += 1
            try:
                return sf.restful(path, method=method, timeout=self.timeout_s, **kwargs)
            except SalesforceExpiredSession:
                if reauthenticated:
                    raise self._session_error() from None
                log.info("Salesforce session expired or invalid; re-authenticating once")
                self.tokens.invalidate(token)
                reauthenticated = True
                continue
            except (SimpleSalesforceError, requests.RequestException) as exc:
                error = classify(exc, path)
            failures += 1
            self._raise_unless_retryable(error, failures, idempotent)
            log.warning(
                "Salesforce %s %s failed (%s); retry %d of %d",
                method,
                path,
                error,
                failures,
                self.max_attempts - 1,
            )
            self.backoff(failures)

    def _raise_unless_retryable(
        self, error: SalesforceError, failures: int, idempotent: bool
    ) -> None:
        unsafe_to_resend = not idempotent and isinstance(error, SalesforceUnavailableError)
        if (
            not error.retryable
            or failures >= self.max_attempts
            or is_daily_limit(error)
            or unsafe_to_resend
        ):
            metrics.record_error("salesforce_rest")
            raise error

    def _session_error(self) -> SessionInvalidError:
        metrics.record_error("salesforce_auth")
        return SessionInvalidError(
            "Salesforce rejected the session (401 INVALID_SESSION_ID) again right after re-authenticating; "
            "check the connected app's IP relaxation and session policies, that the integration user is "
            "active, and that the instance URL is right (a static access token cannot be renewed)",
            error_code="INVALID_SESSION_ID",
            status=401,
        )

    def _salesforce(self) -> tuple[Salesforce, str]:
        """A simple-salesforce client for the current token (rebuilt when the token changes)."""
        try:
            token = self.tokens.token()
        except AuthError as exc:
            raise SessionInvalidError(str(exc), error_code=exc.error) from None
        with self._lock:
            if self._client is None or self._client_token != token.access_token:
                sf = Salesforce(
                    instance_url=token.instance_url,
                    session_id=token.access_token,
                    version=self.api_version,
                    session=self._session,
                )
                # simple-salesforce assumes https; honour the scheme the token endpoint returned
                # (always https for a real org, so this is the same code path everywhere).
                sf.base_url = f"{token.instance_url}/services/data/v{self.api_version}/"
                sf.headers["Sforce-Call-Options"] = f"client={self.client_id}"
                # REST runs the org's active Lead assignment rules on every update unless told
                # not to, which would overwrite the OwnerId the routing policy just wrote.
                sf.headers["Sforce-Auto-Assign"] = "TRUE" if self.auto_assign else "FALSE"
                self._client, self._client_token = sf, token.access_token
            return self._client, token.access_token

    @staticmethod
    def relative(next_records_url: str) -> str:
        """``/services/data/vNN.N/query/<cursor>`` -> ``query/<cursor>`` for ``restful``."""
        marker = "/services/data/v"
        if not next_records_url.startswith(marker):
            raise SalesforceUnavailableError(
                f"unexpected nextRecordsUrl {next_records_url!r} from Salesforce"
            )
        return next_records_url.split("/", 4)[4]

    def backoff(self, retry: int) -> None:
        """Exponential backoff with equal jitter: [d/2, d] for d = base * 2^(retry-1), capped."""
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2 ** (retry - 1))
        self._sleep(ceiling / 2 + self._rng.uniform(0, ceiling / 2))
