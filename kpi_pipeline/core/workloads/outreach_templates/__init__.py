"""Outreach template recommendation: catalog, eligibility, local ranker, LLM selector.

The selection contract is chat-completions shaped (``selection_messages``) so every
decision can be logged in the flywheel format and later distilled into a small model.
``LocalRanker`` is deterministic and pure. ``LLMSelector`` asks an OpenAI-compatible
endpoint and falls back to the ranker on any failure or invalid answer, saying why.

The catalog is ``catalog``, a lead's segments and variables ``segments``, the local ranker
and the selection contract ``selection``, the model's selector ``llm_selector``, and which
template an email used ``applied``.
"""

from kpi_pipeline.core.workloads.outreach_templates.applied import applied_template
from kpi_pipeline.core.workloads.outreach_templates.catalog import (
    CATALOG_PATH,
    CatalogError,
    MissingTemplateVariable,
    Template,
    TemplateCatalog,
    fill_template,
    load_catalog,
    parse_catalog,
)
from kpi_pipeline.core.workloads.outreach_templates.llm_selector import (
    LLMSelector,
    parse_selection_answer,
    selection_messages,
)
from kpi_pipeline.core.workloads.outreach_templates.segments import (
    PROFILE_FIELDS,
    eligible_templates,
    lead_segments,
    lead_variables,
    matched_segments,
    size_segment,
)
from kpi_pipeline.core.workloads.outreach_templates.selection import (
    LOCAL_MODEL,
    LocalRanker,
    TemplateSelection,
    TemplateSelector,
    selection_completion,
)

__all__ = [
    "CATALOG_PATH",
    "LOCAL_MODEL",
    "PROFILE_FIELDS",
    "CatalogError",
    "LLMSelector",
    "LocalRanker",
    "MissingTemplateVariable",
    "Template",
    "TemplateCatalog",
    "TemplateSelection",
    "TemplateSelector",
    "applied_template",
    "eligible_templates",
    "fill_template",
    "lead_segments",
    "lead_variables",
    "load_catalog",
    "matched_segments",
    "parse_catalog",
    "parse_selection_answer",
    "selection_completion",
    "selection_messages",
    "size_segment",
]
