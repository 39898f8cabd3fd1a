"""Pure workload core: record-state merge, lead routing, first touch (TTFR), outreach templates."""
