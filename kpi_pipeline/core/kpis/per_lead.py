"""Per-lead derivations every KPI rollup starts from (pure: pandas in, pandas out): the lead's
local creation day, its TTFR in wall-clock and business minutes, its SLA due instant, stored
or recomputed from the calendars (``business_clocks``), and whether it met, breached or is
pending its SLA (``sla_flags``). The rules behind them are in ``rollups``' docstring."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from kpi_pipeline.core.kpis.lead_facts import (
    BUSINESS_TTFR,
    LeadFactsError,
    check_timezone,
    validate_lead_facts,
)
from kpi_pipeline.core.workloads.business_hours import ALWAYS_OPEN, NS_PER_MINUTE, BusinessClock

Clocks = Mapping[str | None, BusinessClock]

DEFAULT_SLA_MINUTES = 60.0


def _local_day(created: pd.Series, tz: str) -> pd.Series:
    """Local midnight (naive datetime64) of each creation instant in ``tz``.

    Grouping on a datetime64 is much faster than on 1,000,000 date strings; the key is
    turned into text only on the (few) output rows.
    """
    return created.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()


def minutes_or_derived(stored: pd.Series, start: pd.Series, end: pd.Series) -> pd.Series:
    """Stored minutes where present, else (end - start) in minutes rounded to 2 places; NaN without end."""
    derived = ((end - start).dt.total_seconds() / 60.0).round(2)
    minutes = stored.astype("float64").where(stored.notna(), derived)
    return minutes.where(end.notna())


def key_text(values: pd.Series) -> pd.Series:
    """Group key as text, the empty string standing for 'not set'."""
    return values.astype(object).where(values.notna(), "").astype(str)


def per_lead_base(frame: pd.DataFrame, tz: str, clocks: Clocks | None = None) -> pd.DataFrame:
    """The columns every rollup needs, derived once (``due``: the SLA due instant)."""
    validate_lead_facts(frame)
    check_timezone(tz)
    created = frame["CreatedDate"]
    responded_at = frame["First_Response_At__c"]
    ttfr = minutes_or_derived(frame["Time_to_First_Response__c"], created, responded_at)
    if clocks is None:
        due, business = _stored_clocks(frame, ttfr)
    else:
        due, business = business_clocks(frame, clocks)
    return pd.DataFrame(
        {
            "day": _local_day(created, tz),
            "responded": responded_at.notna(),
            "ttfr": ttfr,
            "ttfr_business": business,
            "due": due,
        },
        index=frame.index,
    )


def wall_clock_due(frame: pd.DataFrame) -> pd.Series:
    sla_minutes = frame["SLA_Minutes"].astype("float64").fillna(DEFAULT_SLA_MINUTES)
    return frame["CreatedDate"] + pd.to_timedelta(sla_minutes, unit="min")


def _stored_clocks(frame: pd.DataFrame, ttfr: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Due time and business minutes as the ledger stored them. A lead without them was
    measured on 24x7 time when it has no calendar (due = created + SLA, business minutes =
    wall-clock minutes); with a calendar but no stored minutes they are unknown (NaN)."""
    no_calendar = frame["SLA_Calendar"].isna() | (frame["SLA_Calendar"] == "")
    due = frame["SLA_Due_At"].where(frame["SLA_Due_At"].notna(), wall_clock_due(frame))
    stored = frame[BUSINESS_TTFR].astype("float64")
    business = stored.where(stored.notna(), ttfr.where(no_calendar))
    return due, business.where(frame["First_Response_At__c"].notna())


def _as_ns(values: pd.Series) -> np.ndarray:
    """Instants as int64 nanoseconds since the epoch (NaT comes out as the minimum int64;
    callers mask those). Aware datetimes are stored as UTC ns already: no conversion."""
    return np.asarray(values.dt.as_unit("ns").array.asi8, dtype="int64")


def business_clocks(frame: pd.DataFrame, clocks: Clocks) -> tuple[pd.Series, pd.Series]:
    """(SLA due instant, TTFR business minutes) per lead, recomputed from each lead's
    ``SLA_Calendar`` with ``clocks`` (name -> ``BusinessClock``; empty or None -> 24x7),
    ignoring stored values: what a calendar change would have made of past leads.

    Vectorised per calendar: two binary searches per lead (see ``BusinessClock``)."""
    names = frame["SLA_Calendar"].astype(object).where(frame["SLA_Calendar"].notna(), "")
    names = names.replace("", None) if len(names) else names
    unknown = sorted({str(n) for n in names.dropna().unique()} - {str(k) for k in clocks if k})
    if unknown:
        raise LeadFactsError(
            f"lead facts name calendars {unknown} that the given clocks lack "
            f"({sorted(str(k) for k in clocks if k)}); pass the clocks of the policy that "
            "defines them (kpi_pipeline.core.workloads.business_hours.policy_clocks)"
        )
    created = _as_ns(frame["CreatedDate"])
    responded = frame["First_Response_At__c"].notna().to_numpy()
    responded_at = _as_ns(frame["First_Response_At__c"])
    sla_minutes = frame["SLA_Minutes"].astype("float64").fillna(DEFAULT_SLA_MINUTES).to_numpy()
    due = np.zeros(len(frame), dtype="int64")
    open_ns = np.zeros(len(frame), dtype="int64")
    codes, uniques = pd.factorize(names, use_na_sentinel=True)
    for code, name in [(-1, None), *enumerate(uniques)]:
        rows = np.flatnonzero(codes == code)
        if rows.size == 0:
            continue
        clock = clocks.get(name, ALWAYS_OPEN) if name is None else clocks[name]
        due[rows] = clock.add_open_ns_array(created[rows], sla_minutes[rows])
        answered = rows[responded[rows]]
        open_ns[answered] = clock.open_ns_array(created[answered], responded_at[answered])
    business = pd.Series(np.round(open_ns / NS_PER_MINUTE, 2), index=frame.index)
    due_at = pd.Series(pd.to_datetime(due, unit="ns", utc=True), index=frame.index)
    return due_at, business.where(responded)


def sla_flags(
    responded: pd.Series, responded_at: pd.Series, due: pd.Series, as_of_utc: pd.Timestamp
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per lead (CONTRACTS.md §4.3): met (responded by its due time), breached (responded late,
    or unanswered past due as of ``as_of_utc``), else pending. NaT compares False, so
    "responded_at <= due" only holds for responded leads."""
    met = responded & (responded_at <= due)
    breached = (responded & (responded_at > due)) | (~responded & (due < as_of_utc))
    pending = ~responded & (due >= as_of_utc)
    return met, breached, pending
