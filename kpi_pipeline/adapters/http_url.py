"""The base URL of an HTTP API a setting names (the Salesforce login URL, the LLM API root),
checked when the client is built so a wrong setting fails with its name, not at the first call."""

from __future__ import annotations


def http_base_url(url: str, what: str, advice: str) -> str:
    """``url`` without a trailing slash, or ``ValueError("<what> '<url>' must be an http(s) URL
    <advice>")`` when it is not one."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{what} {url!r} must be an http(s) URL {advice}")
    return url.rstrip("/")
