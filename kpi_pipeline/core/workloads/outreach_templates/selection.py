"""Choosing a template (pure): the ``TemplateSelection`` every selector returns, the
``TemplateSelector`` protocol, the deterministic ``LocalRanker``, and the chat completion
the flywheel logs for a selection the local ranker made."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kpi_pipeline.core.workloads.outreach_templates.catalog import Template, TemplateCatalog
from kpi_pipeline.core.workloads.outreach_templates.segments import (
    lead_segments,
    lead_variables,
    segments_matched,
)

LOCAL_MODEL = "local-ranker-v1"


@dataclass(frozen=True, slots=True)
class TemplateSelection:
    template_id: str | None
    reason: str
    model: str = LOCAL_MODEL
    candidates: tuple[str, ...] = ()
    # The LLM exchange when one happened (for the flywheel log); None for the local ranker.
    messages: list[dict[str, Any]] | None = field(default=None, compare=False)
    completion: dict[str, Any] | None = field(default=None, compare=False)
    fallback_reason: str | None = None


class TemplateSelector(Protocol):
    def select(
        self, lead_fields: Mapping[str, Any], catalog: TemplateCatalog
    ) -> TemplateSelection: ...


class LocalRanker:
    """Deterministic: most specific eligible template first (more matched segment
    dimensions), then one whose variables the lead can fill, then catalog order (the
    catalog lists intent-specific templates before general ones)."""

    model = LOCAL_MODEL

    def rank(
        self, lead_fields: Mapping[str, Any], catalog: TemplateCatalog
    ) -> list[tuple[Template, list[str], bool]]:
        available = set(lead_variables(lead_fields, sender_name="sender"))
        ranked = []
        position = {template.id: index for index, template in enumerate(catalog.templates)}
        segments = lead_segments(lead_fields)
        for template in catalog.templates:
            matched = segments_matched(template, segments)
            if matched is None:
                continue
            fillable = set(template.required_variables) <= available
            ranked.append((template, matched, fillable))
        ranked.sort(key=lambda item: (-len(item[1]), not item[2], position[item[0].id]))
        return ranked

    def select(self, lead_fields: Mapping[str, Any], catalog: TemplateCatalog) -> TemplateSelection:
        ranked = self.rank(lead_fields, catalog)
        candidates = tuple(template.id for template, _, _ in ranked)
        if not ranked:
            return TemplateSelection(
                None, "no template is eligible for this lead", self.model, candidates
            )
        template, matched, fillable = ranked[0]
        why = (
            f"matched {', '.join(matched)}"
            if matched
            else "general template (no segment restriction)"
        )
        if not fillable:
            why += "; some variables must be filled by hand"
        return TemplateSelection(template.id, why, self.model, candidates)


def selection_completion(selection: TemplateSelection, *, created: int) -> dict[str, Any]:
    """A chat completion describing a selection (what the flywheel logs for the local ranker)."""
    if selection.completion is not None:
        return selection.completion
    content = json.dumps(
        {"template_id": selection.template_id, "reason": selection.reason}, sort_keys=True
    )
    return {
        "id": f"chatcmpl-{selection.model}-{created}",
        "object": "chat.completion",
        "created": created,
        "model": selection.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
