"""KPI rollups (core, pure pandas): DESIGN §4.3 turned into daily tables."""

from kpi_pipeline.kpis.rollups import (
    DEFAULT_SLA_MINUTES,
    ROLLUP_NAMES,
    ROLLUP_SCHEMAS,
    LeadFactsError,
    assignment_latency,
    compute_all,
    day_bounds,
    empty_lead_facts,
    lead_facts_columns,
    markdown_table,
    reconcile,
    sla,
    template_usage,
    ttfr_by_owner,
    ttfr_overall,
    validate_lead_facts,
)

__all__ = [
    "DEFAULT_SLA_MINUTES",
    "ROLLUP_NAMES",
    "ROLLUP_SCHEMAS",
    "LeadFactsError",
    "assignment_latency",
    "compute_all",
    "day_bounds",
    "empty_lead_facts",
    "lead_facts_columns",
    "markdown_table",
    "reconcile",
    "sla",
    "template_usage",
    "ttfr_by_owner",
    "ttfr_overall",
    "validate_lead_facts",
]
