"""Salesforce authentication: the JWT bearer flow and its token cache."""

from kpi_pipeline.adapters.auth.jwt import JWTTokenProvider
from kpi_pipeline.adapters.auth.tokens import (
    AccessToken,
    AuthError,
    StaticTokenProvider,
    TokenProvider,
    TokenStats,
)

__all__ = [
    "AccessToken",
    "AuthError",
    "JWTTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "TokenStats",
]
