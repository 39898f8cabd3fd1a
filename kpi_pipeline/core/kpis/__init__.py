"""KPI rollups (core, pure pandas): CONTRACTS.md §4 turned into daily tables."""

from kpi_pipeline.core.kpis.invariants import reconcile
from kpi_pipeline.core.kpis.lead_facts import (
    LeadFactsError,
    day_bounds,
    empty_lead_facts,
    lead_facts_columns,
    validate_lead_facts,
)
from kpi_pipeline.core.kpis.markdown import markdown_table
from kpi_pipeline.core.kpis.per_lead import DEFAULT_SLA_MINUTES, business_clocks
from kpi_pipeline.core.kpis.rollups import (
    ROLLUP_NAMES,
    ROLLUP_SCHEMAS,
    assignment_latency,
    compute_all,
    empty_rollup,
    sla,
    sla_by_owner,
    sla_by_rule,
    template_usage,
    ttfr_by_owner,
    ttfr_overall,
)
from kpi_pipeline.core.kpis.sla_views import SlaCounts, sla_in_both_clocks, sla_over_days

__all__ = [
    "DEFAULT_SLA_MINUTES",
    "ROLLUP_NAMES",
    "ROLLUP_SCHEMAS",
    "LeadFactsError",
    "SlaCounts",
    "assignment_latency",
    "business_clocks",
    "compute_all",
    "day_bounds",
    "empty_lead_facts",
    "empty_rollup",
    "lead_facts_columns",
    "markdown_table",
    "reconcile",
    "sla",
    "sla_by_owner",
    "sla_by_rule",
    "sla_in_both_clocks",
    "sla_over_days",
    "template_usage",
    "ttfr_by_owner",
    "ttfr_overall",
    "validate_lead_facts",
]
