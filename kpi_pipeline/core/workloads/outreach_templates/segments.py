"""What a lead offers the template choice (pure): its segments (``size`` derived from
NumberOfEmployees), the templates it is eligible for, the variables it can fill, and the
firmographic fields a selector may see (no personal data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kpi_pipeline.core.workloads.outreach_templates.catalog import Template, TemplateCatalog

# Lead fields shown to the selector: firmographics only, no personal data.
PROFILE_FIELDS = ("Company", "Industry", "LeadSource", "NumberOfEmployees", "Country", "Title")


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
    return segments_matched(template, lead_segments(lead_fields))


def segments_matched(template: Template, segments: Mapping[str, str]) -> list[str] | None:
    """``matched_segments`` of a lead whose ``lead_segments`` are already known (one lead
    is checked against every template of the catalog)."""
    matched = []
    for dimension, allowed in template.eligible_segments.items():
        value = segments.get(dimension)
        if value is None or value.casefold() not in {a.casefold() for a in allowed}:
            return None
        matched.append(f"{dimension}={value}")
    return matched


def eligible_templates(lead_fields: Mapping[str, Any], catalog: TemplateCatalog) -> list[Template]:
    segments = lead_segments(lead_fields)
    return [t for t in catalog.templates if segments_matched(t, segments) is not None]


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
