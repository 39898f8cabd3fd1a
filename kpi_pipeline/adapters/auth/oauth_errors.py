"""What to do about Salesforce's terse OAuth token errors (an adapter helper of the JWT flow):
``fix_for`` maps an error and its description to the operator's fix, ``token_error`` turns a
refused token response into an ``AuthError`` that names it. Never echoes the assertion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kpi_pipeline.adapters.auth.tokens import AuthError

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


def token_error(
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
