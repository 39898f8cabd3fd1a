"""Outreach template recommendation: catalog, eligibility, local ranker, LLM selector.

The selection contract is chat-completions shaped (``selection_messages``) so every
decision can be logged in the flywheel format and later distilled into a small model.
``LocalRanker`` is deterministic and pure. ``LLMSelector`` asks an OpenAI-compatible
endpoint and falls back to the ranker on any failure or invalid answer, saying why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from kpi_pipeline.core.workloads.records import RecordState

CATALOG_PATH = Path(__file__).resolve().parent / "templates_catalog.json"
LOCAL_MODEL = "local-ranker-v1"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Lead fields shown to the selector: firmographics only, no personal data.
PROFILE_FIELDS = ("Company", "Industry", "LeadSource", "NumberOfEmployees", "Country", "Title")


class CatalogError(ValueError):
    """The template catalog is malformed."""


class MissingTemplateVariable(KeyError):
    def __init__(self, template_id: str, variable: str) -> None:
        self.template_id = template_id
        self.variable = variable
        super().__init__(
            f"template {template_id!r} needs variable {variable!r}; pass it in variables "
            f"(e.g. {{'{variable}': ...}}) or choose another template"
        )

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    intent: str
    subject: str
    body: str
    required_variables: tuple[str, ...]
    eligible_segments: Mapping[str, tuple[str, ...]]
    email_template_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateCatalog:
    version: str
    templates: tuple[Template, ...]

    def get(self, template_id: str) -> Template | None:
        return next((t for t in self.templates if t.id == template_id), None)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.templates)


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


# --- catalog ---------------------------------------------------------------------------


def parse_catalog(raw: Mapping[str, Any]) -> TemplateCatalog:
    """A catalog from its JSON form; errors name the template and the bad key."""
    templates = []
    seen: set[str] = set()
    for index, item in enumerate(raw.get("templates") or []):
        where = f"templates[{index}]"
        try:
            template = Template(
                id=item["id"],
                intent=item["intent"],
                subject=item["subject"],
                body=item["body"],
                required_variables=tuple(item.get("required_variables") or ()),
                eligible_segments={
                    k: tuple(v) for k, v in (item.get("eligible_segments") or {}).items()
                },
                email_template_ids=tuple(item.get("email_template_ids") or ()),
            )
        except (KeyError, TypeError) as exc:
            raise CatalogError(
                f"catalog {where} lacks or mistypes {exc}; needs id, intent, subject, body"
            ) from exc
        if template.id in seen:
            raise CatalogError(f"catalog {where}: template id {template.id!r} is used twice")
        seen.add(template.id)
        used = set(_PLACEHOLDER.findall(template.subject + template.body))
        undeclared = sorted(used - set(template.required_variables))
        if undeclared:
            raise CatalogError(
                f"catalog {where} ({template.id}) uses undeclared variables {undeclared}"
            )
        templates.append(template)
    if not templates:
        raise CatalogError("catalog has no templates")
    return TemplateCatalog(version=str(raw.get("version", "")), templates=tuple(templates))


@lru_cache(maxsize=4)
def _load_catalog_file(path: str) -> TemplateCatalog:
    return parse_catalog(json.loads(Path(path).read_text(encoding="utf-8")))


def load_catalog(path: str | Path | None = None) -> TemplateCatalog:
    """The packaged catalog, or one from ``path``."""
    return _load_catalog_file(str(path or CATALOG_PATH))


# --- segments and variables --------------------------------------------------------------


def size_segment(employees: Any) -> str | None:
    try:
        count = int(float(employees))
    except (TypeError, ValueError):
        return None
    if count >= 1000:
        return "enterprise"
    return "mid" if count >= 200 else "smb"


def lead_segments(lead_fields: Mapping[str, Any]) -> dict[str, str]:
    """The lead's value per segment dimension (``size`` derived from NumberOfEmployees)."""
    segments = {
        name: str(value)
        for name, value in lead_fields.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != ""
    }
    size = size_segment(lead_fields.get("NumberOfEmployees"))
    if size:
        segments["size"] = size
    return segments


def matched_segments(template: Template, lead_fields: Mapping[str, Any]) -> list[str] | None:
    """Dimensions the lead matches, or None when the template is not eligible for it."""
    segments = lead_segments(lead_fields)
    matched = []
    for dimension, allowed in template.eligible_segments.items():
        value = segments.get(dimension)
        if value is None or value.casefold() not in {a.casefold() for a in allowed}:
            return None
        matched.append(f"{dimension}={value}")
    return matched


def eligible_templates(lead_fields: Mapping[str, Any], catalog: TemplateCatalog) -> list[Template]:
    return [t for t in catalog.templates if matched_segments(t, lead_fields) is not None]


def lead_variables(
    lead_fields: Mapping[str, Any], *, sender_name: str | None = None
) -> dict[str, str]:
    """Template variables available from a lead (and the sender, when known)."""
    name = lead_fields.get("Name")
    first_name = lead_fields.get("FirstName") or (
        name.get("FirstName") if isinstance(name, Mapping) else None
    )
    values = {
        "first_name": first_name,
        "company": lead_fields.get("Company"),
        "industry": lead_fields.get("Industry"),
        "title": lead_fields.get("Title"),
        "lead_source": lead_fields.get("LeadSource"),
        "sender_name": sender_name,
    }
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def fill_template(template: Template, variables: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, body) with every ``{{variable}}`` filled; raises MissingTemplateVariable."""
    for name in template.required_variables:
        if variables.get(name) in (None, ""):
            raise MissingTemplateVariable(template.id, name)

    def substitute(match: re.Match[str]) -> str:
        value = variables.get(match.group(1))
        if value in (None, ""):
            raise MissingTemplateVariable(template.id, match.group(1))
        return str(value)

    return _PLACEHOLDER.sub(substitute, template.subject), _PLACEHOLDER.sub(
        substitute, template.body
    )


# --- selection -------------------------------------------------------------------------


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
        for template in catalog.templates:
            matched = matched_segments(template, lead_fields)
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


# --- which template an email used --------------------------------------------------------


@lru_cache(maxsize=64)
def _subject_pattern(subject: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(subject)
    # split alternates literal, variable name, literal...; variables become non-empty wildcards
    regex = "".join(re.escape(part) if i % 2 == 0 else ".+?" for i, part in enumerate(parts))
    return re.compile(rf"^{regex}$", re.IGNORECASE | re.DOTALL)


def _static_prefix(subject: str) -> str:
    return _PLACEHOLDER.split(subject, maxsplit=1)[0]


MIN_PREFIX = 8  # shorter static prefixes ("Hi ") would match unrelated mail


def applied_template(email: RecordState, catalog: TemplateCatalog) -> str | None:
    """The catalog template an EmailMessage used: by ``EmailTemplateId`` (a catalog id or
    a mapped Salesforce template id), else by its subject matching a template's subject."""
    template_id = email.fields.get("EmailTemplateId")
    if isinstance(template_id, str) and template_id:
        for template in catalog.templates:
            if template_id == template.id or template_id in template.email_template_ids:
                return template.id
    subject = email.fields.get("Subject")
    if not isinstance(subject, str) or not subject.strip():
        return None
    subject = subject.strip()
    exact = [t.id for t in catalog.templates if _subject_pattern(t.subject).match(subject)]
    if exact:
        return _most_specific(exact, catalog)
    prefixed = [
        (len(_static_prefix(t.subject)), t.id)
        for t in catalog.templates
        if len(_static_prefix(t.subject)) >= MIN_PREFIX
        and subject.casefold().startswith(_static_prefix(t.subject).casefold())
    ]
    return max(prefixed)[1] if prefixed else None


def _most_specific(ids: list[str], catalog: TemplateCatalog) -> str:
    """Among subject matches, the template with the most literal text (least wildcard)."""

    def literal_length(template_id: str) -> int:
        template = catalog.get(template_id)
        return len(_PLACEHOLDER.sub("", template.subject)) if template else 0

    return max(ids, key=lambda template_id: (literal_length(template_id), template_id))
