"""The report ``policy simulate`` prints (CLI helper): owner and rule distributions of a
policy and its baseline side by side, how many leads change owner, and the SLA breach % of
each side on the wall clock and in business hours."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from kpi_pipeline.core.events import format_sf_datetime
from kpi_pipeline.core.kpis.sla_views import SlaCounts
from kpi_pipeline.core.policy.load import RoutingPolicy
from kpi_pipeline.core.workloads.lead_route import RoutingDecision


def format_comparison(
    new: list[RoutingDecision],
    old: list[RoutingDecision],
    candidate: RoutingPolicy,
    baseline: RoutingPolicy,
    *,
    total_leads: int,
    sla: tuple[dict[str, SlaCounts], dict[str, SlaCounts], datetime] | None = None,
) -> str:
    """The what-if report: owner and rule distributions side by side, plus leads that move,
    and the SLA breach % of each side in both clocks."""
    moved = sum(1 for a, b in zip(new, old, strict=True) if a.owner_id != b.owner_id)
    lines = [
        f"leads in stream: {total_leads}; routed: {len(new)}; owner changes vs baseline: {moved}",
        f"policy {candidate.version} vs baseline {baseline.version}",
        "",
    ]
    lines += _table("owner", Counter(d.owner_id for d in new), Counter(d.owner_id for d in old))
    lines.append("")
    lines += _table("rule", Counter(d.rule_id for d in new), Counter(d.rule_id for d in old))
    if sla is not None:
        lines.append("")
        lines += _sla_table(*sla)
    return "\n".join(lines)


_CLOCK_LABELS = {"wall_clock": "wall clock", "business_hours": "business hours"}


def _sla_table(new: dict[str, SlaCounts], old: dict[str, SlaCounts], as_of: datetime) -> list[str]:
    """Breach % = breached / (met + breached), with met/breached/pending behind it."""
    rows = [
        f"SLA as of {format_sf_datetime(as_of)}: breach % (met/breached/pending)",
        f"{'clock':<14}  {'policy':>22}  {'baseline':>22}  {'delta':>7}",
    ]
    for key, label in _CLOCK_LABELS.items():
        a, b = new[key], old[key]
        delta = (
            f"{a.breach_pct - b.breach_pct:+.1f}"
            if a.breach_pct is not None and b.breach_pct is not None
            else "n/a"
        )
        rows.append(f"{label:<14}  {_cell(a):>22}  {_cell(b):>22}  {delta:>7}")
    return rows


def _cell(counts: SlaCounts) -> str:
    pct = "n/a" if counts.breach_pct is None else f"{counts.breach_pct:.1f}%"
    return f"{pct} ({counts.met}/{counts.breached}/{counts.pending})"


def _table(label: str, new: Counter[str], old: Counter[str]) -> list[str]:
    keys = sorted(set(new) | set(old), key=lambda k: (-new.get(k, 0), k))
    width = max([len(label), *(len(k) for k in keys)])
    rows = [f"{label:<{width}}  {'policy':>7}  {'baseline':>8}  {'delta':>6}"]
    for key in keys:
        delta = new.get(key, 0) - old.get(key, 0)
        rows.append(f"{key:<{width}}  {new.get(key, 0):>7}  {old.get(key, 0):>8}  {delta:>+6}")
    return rows
