"""Minimal OpenAI-compatible chat-completions client (``POST {base_url}/chat/completions``).

Works with OpenAI, vLLM, NIM, Ollama and any server with the same wire format. It only
transports: callers validate the content. Every failure is a ``ChatClientError`` whose
``kind`` (``timeout``, ``http``, ``connection``, ``invalid_response``) lets callers
explain their fallback.
"""

from __future__ import annotations

from typing import Any

import requests

from kpi_pipeline.adapters.http_url import http_base_url
from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.core.workloads.outreach_templates import (
    LLMSelector,
    LocalRanker,
    TemplateSelector,
)


class ChatClientError(RuntimeError):
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class ChatClient:
    """``base_url`` is the API root including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = http_base_url(
            base_url, "LLM base URL", "(set KPI_LLM_BASE_URL, e.g. http://127.0.0.1:8000/v1)"
        )
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self._session = session or requests.Session()

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def request_body(self, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """The exact chat-completions request sent (the flywheel log records it)."""
        return {"model": self.model, "messages": messages, **options}

    def complete(self, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """The raw chat completion for ``messages`` (``options``: temperature, max_tokens...)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self._session.post(
                self.endpoint,
                json=self.request_body(messages, **options),
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise ChatClientError(
                "timeout", f"{self.endpoint} did not answer within {self.timeout}s"
            ) from exc
        except requests.ConnectionError as exc:
            raise ChatClientError("connection", f"cannot reach {self.endpoint}: {exc}") from exc
        if response.status_code != 200:
            raise ChatClientError(
                "http",
                f"{self.endpoint} answered HTTP {response.status_code}: {response.text[:200]}",
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise ChatClientError(
                "invalid_response", f"{self.endpoint} returned non-JSON: {response.text[:200]}"
            ) from exc
        if not isinstance(body, dict) or not body.get("choices"):
            raise ChatClientError(
                "invalid_response", f"{self.endpoint} returned no choices: {str(body)[:200]}"
            )
        return body

    def close(self) -> None:
        self._session.close()


def selector_from_settings(settings: Settings | None = None) -> TemplateSelector:
    """The template selector the settings ask for: ``LLMSelector`` over ``ChatClient`` when
    ``KPI_LLM_BASE_URL`` is set (falling back to the local ranker), else ``LocalRanker``."""
    settings = settings or get_settings()
    if not settings.llm_base_url:
        return LocalRanker()
    client = ChatClient(
        settings.llm_base_url,
        settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeout=settings.llm_timeout_seconds,
    )
    return LLMSelector(client, fallback=LocalRanker())
