"""The outreach template catalog (pure but for reading its JSON file): templates with their
intent, subject, body, required variables and eligible segments, parsed and checked
(``parse_catalog``, ``load_catalog``), and a template filled with a lead's variables."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# The catalog file sits beside this package, in core/workloads.
CATALOG_PATH = Path(__file__).resolve().parent.parent / "templates_catalog.json"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


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
        used = set(PLACEHOLDER.findall(template.subject + template.body))
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

    return PLACEHOLDER.sub(substitute, template.subject), PLACEHOLDER.sub(substitute, template.body)
