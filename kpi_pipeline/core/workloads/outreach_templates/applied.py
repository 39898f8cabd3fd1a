"""Which catalog template an EmailMessage used (pure): by its template id, else by its
subject matching a template's subject (placeholders as wildcards), else by a long enough
static subject prefix."""

from __future__ import annotations

import re
from functools import lru_cache

from kpi_pipeline.core.workloads.outreach_templates.catalog import PLACEHOLDER, TemplateCatalog
from kpi_pipeline.core.workloads.records import RecordState


@lru_cache(maxsize=64)
def _subject_pattern(subject: str) -> re.Pattern[str]:
    parts = PLACEHOLDER.split(subject)
    # split alternates literal, variable name, literal...; variables become non-empty wildcards
    regex = "".join(re.escape(part) if i % 2 == 0 else ".+?" for i, part in enumerate(parts))
    return re.compile(rf"^{regex}$", re.IGNORECASE | re.DOTALL)


def _static_prefix(subject: str) -> str:
    return PLACEHOLDER.split(subject, maxsplit=1)[0]


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
        return len(PLACEHOLDER.sub("", template.subject)) if template else 0

    return max(ids, key=lambda template_id: (literal_length(template_id), template_id))
