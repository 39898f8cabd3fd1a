"""The code location's KPI assets, spelled out once for the tests that check them (the
lineage analysts rely on): not derived from ROLLUP_NAMES, so a rollup added or renamed there
shows up here as a difference."""

from __future__ import annotations

KPI_ASSETS = frozenset(
    {
        "kpi_ttfr_overall",
        "kpi_ttfr_by_owner",
        "kpi_sla",
        "kpi_sla_by_owner",
        "kpi_sla_by_rule",
        "kpi_assignment_latency",
        "kpi_template_usage",
    }
)
