"""SLA counts outside the daily tables (pure): over a whole frame in both clocks, for
``policy simulate``'s what-ifs, and the most-breached groups of an SLA breakdown, for asset
metadata."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from kpi_pipeline.core.kpis.lead_facts import check_as_of
from kpi_pipeline.core.kpis.per_lead import Clocks, business_clocks, sla_flags, wall_clock_due


@dataclass(frozen=True, slots=True)
class SlaCounts:
    met: int
    breached: int
    pending: int

    @property
    def breach_pct(self) -> float | None:
        """100 * breached / (met + breached); None while nothing is settled."""
        settled = self.met + self.breached
        return 100.0 * self.breached / settled if settled else None


def sla_in_both_clocks(
    frame: pd.DataFrame, *, as_of: datetime, clocks: Clocks | None = None
) -> dict[str, SlaCounts]:
    """SLA met / breached / pending as of ``as_of`` over all leads of ``frame``, with the
    due time on the wall clock (created + SLA minutes) and in business hours (created + SLA
    minutes of open time in each lead's ``SLA_Calendar``): ``{"wall_clock": ...,
    "business_hours": ...}``.

    ``frame`` needs ``CreatedDate``, ``First_Response_At__c``, ``SLA_Minutes`` and
    ``SLA_Calendar``; with ``clocks`` the business due times are computed from the
    calendars (a what-if), without them ``SLA_Due_At`` as stored is used."""
    as_of_utc = check_as_of(as_of)
    wall = wall_clock_due(frame)
    if clocks is not None:
        business, _ = business_clocks(frame, clocks)
    else:
        business = frame["SLA_Due_At"].where(frame["SLA_Due_At"].notna(), wall)
    responded_at = frame["First_Response_At__c"]
    return {
        "wall_clock": _counts(responded_at, wall, as_of_utc),
        "business_hours": _counts(responded_at, business, as_of_utc),
    }


def _counts(responded_at: pd.Series, due: pd.Series, as_of_utc: pd.Timestamp) -> SlaCounts:
    met, breached, pending = sla_flags(responded_at.notna(), responded_at, due, as_of_utc)
    return SlaCounts(met=int(met.sum()), breached=int(breached.sum()), pending=int(pending.sum()))


def sla_over_days(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """An SLA table summed over its days per group of ``keys``, with the groups' breach %,
    most breached first (ties by key): where breaches concentrate in a window."""
    groups = table.groupby(keys, sort=True)[["met", "breached", "pending"]].sum().reset_index()
    settled = groups["met"] + groups["breached"]
    groups["breach_pct"] = (100.0 * groups["breached"] / settled).where(settled > 0)
    order = groups.sort_values(keys, kind="mergesort")
    order = order.sort_values("breached", ascending=False, kind="mergesort")
    return order.reset_index(drop=True)
