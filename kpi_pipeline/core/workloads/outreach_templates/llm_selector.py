"""Choosing a template with a model (pure: the client is passed in): the chat-completions
request (``selection_messages``), the checks on the model's answer, and ``LLMSelector``,
which falls back to another selector on any failure or invalid answer, saying why."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kpi_pipeline.core.workloads.outreach_templates.catalog import TemplateCatalog
from kpi_pipeline.core.workloads.outreach_templates.segments import (
    PROFILE_FIELDS,
    eligible_templates,
    size_segment,
)
from kpi_pipeline.core.workloads.outreach_templates.selection import (
    LocalRanker,
    TemplateSelection,
    TemplateSelector,
)


def selection_messages(
    lead_fields: Mapping[str, Any], catalog: TemplateCatalog
) -> list[dict[str, Any]]:
    """The chat-completions messages of a selection request (system + user)."""
    profile = {
        name: lead_fields.get(name)
        for name in PROFILE_FIELDS
        if lead_fields.get(name) not in (None, "")
    }
    size = size_segment(lead_fields.get("NumberOfEmployees"))
    if size:
        profile["size"] = size
    candidates = [
        {
            "id": t.id,
            "intent": t.intent,
            "subject": t.subject,
            "segments": dict(t.eligible_segments),
        }
        for t in eligible_templates(lead_fields, catalog)
    ]
    system = (
        "You pick the outreach email template for a sales rep's first touch with a new lead. "
        "Choose exactly one id from the candidates. Answer with JSON only: "
        '{"template_id": "<candidate id>", "reason": "<one sentence>"}.'
    )
    user = json.dumps({"lead": profile, "candidates": candidates}, sort_keys=True, default=str)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_selection_answer(
    content: str, eligible_ids: set[str], known_ids: set[str]
) -> tuple[str, str]:
    """(template_id, reason) from the model's answer; ValueError says what is wrong with it."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not JSON ({exc.msg}): {content[:80]!r}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("template_id"), str):
        raise ValueError(f"answer lacks a string template_id: {content[:80]!r}")
    template_id = answer["template_id"]
    if template_id not in known_ids:
        raise ValueError(f"answer names unknown template {template_id!r}")
    if template_id not in eligible_ids:
        raise ValueError(
            f"answer names template {template_id!r}, which is not eligible for this lead"
        )
    return template_id, str(answer.get("reason") or "chosen by the model")


class LLMSelector:
    """Ask an OpenAI-compatible model; fall back to ``fallback`` on failure or bad output.

    ``client`` is anything with ``model`` and ``complete(messages, **options) -> dict``
    (``kpi_pipeline.adapters.llm.client.ChatClient``). The client raises on timeouts and HTTP errors.
    """

    def __init__(self, client: Any, fallback: TemplateSelector | None = None) -> None:
        self.client = client
        self.fallback = fallback or LocalRanker()

    def select(self, lead_fields: Mapping[str, Any], catalog: TemplateCatalog) -> TemplateSelection:
        eligible = eligible_templates(lead_fields, catalog)
        candidates = tuple(t.id for t in eligible)
        if not eligible:
            return TemplateSelection(
                None, "no template is eligible for this lead", self.client.model, candidates
            )
        messages = selection_messages(lead_fields, catalog)
        try:
            completion = self.client.complete(messages, temperature=0)
        except Exception as exc:  # any transport failure means: use the fallback
            return self._fall_back(
                lead_fields, catalog, messages, None, f"LLM request failed: {exc}"
            )
        content = _content(completion)
        try:
            template_id, reason = parse_selection_answer(content, set(candidates), set(catalog.ids))
        except ValueError as exc:
            return self._fall_back(
                lead_fields, catalog, messages, completion, f"LLM answer rejected: {exc}"
            )
        model = str(completion.get("model") or self.client.model)
        return TemplateSelection(template_id, reason, model, candidates, messages, completion)

    def _fall_back(
        self,
        lead_fields: Mapping[str, Any],
        catalog: TemplateCatalog,
        messages: list[dict[str, Any]],
        completion: dict[str, Any] | None,
        why: str,
    ) -> TemplateSelection:
        chosen = self.fallback.select(lead_fields, catalog)
        return TemplateSelection(
            chosen.template_id,
            f"{chosen.reason} (fallback: {why})",
            chosen.model,
            chosen.candidates,
            messages,
            completion,
            fallback_reason=why,
        )


def _content(completion: Mapping[str, Any]) -> str:
    try:
        return completion["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
