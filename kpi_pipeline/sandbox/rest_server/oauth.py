"""``POST /services/oauth2/token``: the JWT bearer flow.

Verifies the RS256 signature against the connected app's key and the ``iss``/``sub``/``aud``/
``exp`` claims with the server's clock, and answers with Salesforce's token response or its
OAuth error texts."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import jwt as pyjwt

from kpi_pipeline.sandbox.rest_server.app_state import RestAppState
from kpi_pipeline.sandbox.rest_server.responses import Response, oauth_error

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_AHEAD_S = 300  # Salesforce wants exp "within a few minutes"
CLOCK_SKEW_S = 5


class OAuthEndpoint(RestAppState):
    """The token endpoint (see the module docstring)."""

    def token(self, body: bytes) -> Response:
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != JWT_BEARER_GRANT:
            return oauth_error("unsupported_grant_type", "grant type not supported")
        assertion = form.get("assertion", [""])[0]
        try:
            claims = pyjwt.decode(assertion, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            return oauth_error("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.app.consumer_key:
            return oauth_error("invalid_client_id", "client identifier invalid")
        try:
            # Claims are checked below with our clock and Salesforce's error texts.
            pyjwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_aud": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except pyjwt.PyJWTError:
            return oauth_error("invalid_grant", "invalid assertion")
        refusal = self._check_claims(claims)
        if refusal is not None:
            return refusal
        return self._issue(str(claims["sub"]))

    def _check_claims(self, claims: Mapping[str, Any]) -> Response | None:
        audiences = {self.url, *self.app.login_audiences}
        if claims.get("aud") not in audiences:
            return oauth_error("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        now = self.clock()
        if not isinstance(exp, int | float) or exp <= now - CLOCK_SKEW_S:
            return oauth_error("invalid_grant", "expired authorization code")
        if exp > now + MAX_ASSERTION_AHEAD_S + CLOCK_SKEW_S:
            return oauth_error("invalid_grant", "invalid assertion")
        if self.app.user_id_for(str(claims.get("sub", ""))) is None:
            return oauth_error("invalid_grant", "user hasn't approved this consumer")
        return None

    def _issue(self, username: str) -> Response:
        user_id = self.app.user_id_for(username)
        access_token = self.registry.issue(username)
        identity = f"{self.url}/id/{self.tenant_id}/{user_id}"
        issued_at = str(int(self.clock() * 1000))
        mac = hmac.new(
            self._signing_secret, (identity + issued_at).encode(), hashlib.sha256
        ).digest()
        return Response(
            200,
            {
                "access_token": access_token,
                "scope": "api",
                "instance_url": self.instance_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": base64.b64encode(mac).decode(),
            },
        )
