"""KPI rollups over the lead-facts frame (CONTRACTS.md §4). Pure: pandas in, pandas out.

Input is one row per lead with the columns of ``lead_facts_columns()`` (what
``Ledger.lead_facts_frame`` returns): datetimes tz-aware (any zone; read as instants),
numbers float with NaN for none, strings or None.

Every rollup is keyed by ``day``, the calendar date of the lead's creation in the
requested timezone, written ``YYYY-MM-DD`` (the same text as a Dagster daily partition
key). Outputs have a fixed column order, fixed dtypes and are sorted by their key
columns, so the same input gives byte-identical CSV.

Decisions where CONTRACTS.md §4 is silent (documented here because the CSVs carry them):

* **Responded** means ``First_Response_At__c`` is set. TTFR minutes are the stored
  ``Time_to_First_Response__c``; if a responded lead lacks them they are derived as
  (first response - created) in minutes, rounded to 2 places, as the ledger would.
  Assignment latency is treated the same way (``Owner_Assigned_At__c`` and
  ``Assignment_Latency_Minutes__c``).
* **Percentiles** are over responded (resp. assigned) leads only, with linear
  interpolation (numpy's default); NaN when a group has none. Coverage shows how many
  leads the percentiles leave out (unanswered leads are right-censored).
* **Business hours.** The SLA is due at ``SLA_Due_At``: created + SLA minutes of open
  time in the lead's calendar (``SLA_Calendar``), as the processor stored it. A lead
  without it (measured before calendars existed, or a frame built by hand) is due at
  created + ``SLA_Minutes`` on the wall clock, 60 when NaN; that is what 24x7 means.
  Business-minute TTFR is ``Time_to_First_Response_Business_Minutes__c``; missing on a
  responded lead without a calendar it is its wall-clock TTFR (24x7), with a calendar it
  stays unknown (NaN) rather than guessed. ``compute_all(..., clocks=...)`` recomputes
  both from the calendars instead (a what-if on past leads).
* **SLA** states: a response exactly at the due instant is ``met``. ``breach_pct`` is a percentage (0-100):
  100 * breached ÷ (met + breached). Unanswered leads past due count as breached (open
  breaches), so they are in the denominator; pending leads are not, as they can still be
  met. NaN when met + breached is 0 (every lead of the day still pending).
* **SLA by owner and by rule** use the daily SLA's states and as-of instant, grouped
  further by the lead's current ``OwnerId`` (who must answer for it now), resp. by
  (``Routing_Policy_Version__c``, ``Routing_Rule__c``); per day their met, breached and
  pending add up to the daily SLA row.
* **Missing group keys** (``OwnerId``, ``Routing_Policy_Version__c``,
  ``Routing_Rule__c`` not set) form their own group with the empty string as key, so
  every lead is counted somewhere and per-group counts sum to the day's leads.
* **Template acceptance**: ``recommended`` counts leads whose recommended template is
  the row's template; ``applied`` counts those of them whose first outbound email used
  that same template (the recommendation was taken). ``acceptance`` = applied ÷
  recommended, in [0, 1]. An email using a template that was not the recommendation
  is not an acceptance and is not counted. Leads without a recommendation are absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from kpi_pipeline.core.workloads.business_hours import ALWAYS_OPEN, NS_PER_MINUTE, BusinessClock

Clocks = Mapping[str | None, BusinessClock]

DEFAULT_SLA_MINUTES = 60.0

BUSINESS_TTFR = "Time_to_First_Response_Business_Minutes__c"
DATETIME_COLUMNS = ("CreatedDate", "Owner_Assigned_At__c", "First_Response_At__c", "SLA_Due_At")
NUMBER_COLUMNS = (
    "Assignment_Latency_Minutes__c",
    "Time_to_First_Response__c",
    "SLA_Minutes",
    BUSINESS_TTFR,
)
STRING_COLUMNS = (
    "Id",
    "OwnerId",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Template_Recommended__c",
    "Template_Applied__c",
    "Routing_Policy_Version__c",
    "Routing_Rule__c",
    "SLA_Calendar",
)
_LEAD_FACTS_COLUMNS = (
    "Id",
    "CreatedDate",
    "OwnerId",
    "Owner_Assigned_At__c",
    "Assignment_Latency_Minutes__c",
    "First_Response_At__c",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Time_to_First_Response__c",
    "Template_Recommended__c",
    "Template_Applied__c",
    "Routing_Policy_Version__c",
    "Routing_Rule__c",
    "SLA_Minutes",
    BUSINESS_TTFR,
    "SLA_Calendar",
    "SLA_Due_At",
)

# Output schemas: column -> dtype. The order here is the column order of the output.
_COUNT = "int64"
_REAL = "float64"
_TEXT = "object"
_TTFR_COLUMNS = {
    "leads": _COUNT,
    "responded": _COUNT,
    "coverage": _REAL,
    "ttfr_p50": _REAL,
    "ttfr_p90": _REAL,
    "ttfr_p95": _REAL,
    "ttfr_business_p50": _REAL,
    "ttfr_business_p90": _REAL,
    "ttfr_business_p95": _REAL,
}
_SLA_COLUMNS = {"met": _COUNT, "breached": _COUNT, "pending": _COUNT, "breach_pct": _REAL}
ROLLUP_SCHEMAS: dict[str, dict[str, str]] = {
    "ttfr_overall": {"day": _TEXT, **_TTFR_COLUMNS},
    "ttfr_by_owner": {"day": _TEXT, "owner_id": _TEXT, **_TTFR_COLUMNS},
    "sla": {"day": _TEXT, **_SLA_COLUMNS},
    "sla_by_owner": {"day": _TEXT, "owner_id": _TEXT, **_SLA_COLUMNS},
    "sla_by_rule": {"day": _TEXT, "policy_version": _TEXT, "rule": _TEXT, **_SLA_COLUMNS},
    "assignment_latency": {
        "day": _TEXT,
        "policy_version": _TEXT,
        "rule": _TEXT,
        "leads": _COUNT,
        "assigned": _COUNT,
        "latency_p50": _REAL,
        "latency_p95": _REAL,
    },
    "template_usage": {
        "day": _TEXT,
        "template_id": _TEXT,
        "recommended": _COUNT,
        "applied": _COUNT,
        "acceptance": _REAL,
    },
}
ROLLUP_NAMES: tuple[str, ...] = tuple(ROLLUP_SCHEMAS)


class LeadFactsError(ValueError):
    """The lead-facts frame (or an argument) cannot be rolled up as given."""


# --- the input contract -----------------------------------------------------------------


def lead_facts_columns() -> tuple[str, ...]:
    """The lead-facts columns, in the order ``Ledger.lead_facts_frame`` returns them."""
    return _LEAD_FACTS_COLUMNS


def empty_lead_facts() -> pd.DataFrame:
    """A lead-facts frame with no rows and the dtypes the rollups expect."""
    columns: dict[str, pd.Series] = {}
    for name in _LEAD_FACTS_COLUMNS:
        if name in DATETIME_COLUMNS:
            columns[name] = pd.Series([], dtype="datetime64[ns, UTC]")
        elif name in NUMBER_COLUMNS:
            columns[name] = pd.Series([], dtype="float64")
        else:
            columns[name] = pd.Series([], dtype="object")
    return pd.DataFrame(columns)


def validate_lead_facts(frame: pd.DataFrame) -> None:
    """Raise ``LeadFactsError`` naming what is wrong with ``frame`` and how to fix it."""
    if not isinstance(frame, pd.DataFrame):
        raise LeadFactsError(
            f"lead facts must be a pandas DataFrame, got {type(frame).__name__}; "
            "build it with Ledger.lead_facts_frame() or empty_lead_facts()"
        )
    missing = [name for name in _LEAD_FACTS_COLUMNS if name not in frame.columns]
    if missing:
        raise LeadFactsError(
            f"lead facts frame lacks columns {missing}; it needs exactly "
            f"{list(_LEAD_FACTS_COLUMNS)} (see kpi_pipeline.core.kpis.lead_facts_columns())"
        )
    for name in DATETIME_COLUMNS:
        if not isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            raise LeadFactsError(
                f"lead facts column {name} has dtype {frame[name].dtype}; it must be tz-aware "
                "datetimes (convert with pd.to_datetime(values, utc=True))"
            )
    for name in NUMBER_COLUMNS:
        if not pd.api.types.is_numeric_dtype(frame[name].dtype):
            raise LeadFactsError(
                f"lead facts column {name} has dtype {frame[name].dtype}; it must be numeric "
                "(NaN for none; convert with pd.to_numeric(values))"
            )
    _reject_bad_rows(frame)


def _reject_bad_rows(frame: pd.DataFrame) -> None:
    problems = {
        "CreatedDate is empty (every lead needs its creation time)": frame["CreatedDate"].isna(),
        "SLA_Minutes is negative": frame["SLA_Minutes"] < 0,
        "Id is empty": frame["Id"].isna(),
    }
    for what, bad in problems.items():
        if bad.any():
            examples = frame.loc[bad, "Id"].head(3).tolist()
            raise LeadFactsError(
                f"{int(bad.sum())} lead(s) where {what}, e.g. Id {examples}; "
                "fix those rows in the ledger before rolling up"
            )
    duplicated = frame["Id"].duplicated()
    if duplicated.any():
        examples = frame.loc[duplicated, "Id"].head(3).tolist()
        raise LeadFactsError(
            f"{int(duplicated.sum())} duplicate lead Id(s), e.g. {examples}; the frame must "
            "hold one row per lead"
        )


def _check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise LeadFactsError(
            f"timezone {tz!r} is not an IANA zone name; use e.g. 'UTC' or 'Europe/Paris' "
            "(setting KPI_TIMEZONE)"
        ) from exc
    return tz


def _check_as_of(as_of: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(as_of)
    if stamp.tzinfo is None:
        raise LeadFactsError(
            f"as_of {as_of!r} has no timezone; pass an aware datetime, e.g. "
            "datetime(2026, 1, 2, tzinfo=UTC)"
        )
    return stamp.tz_convert("UTC")


def day_bounds(day: str, *, tz: str = "UTC") -> tuple[datetime, datetime]:
    """UTC instants [start, end) of calendar ``day`` (``YYYY-MM-DD``) in ``tz``.

    What to pass to ``Ledger.lead_facts_frame`` for one daily partition: a local day is
    23 or 25 hours long when daylight saving time starts or ends.
    """
    _check_timezone(tz)
    try:
        start = pd.Timestamp(day)
    except ValueError as exc:
        raise LeadFactsError(f"day {day!r} is not a date; write it YYYY-MM-DD") from exc
    if start != start.normalize() or start.tzinfo is not None:
        raise LeadFactsError(f"day {day!r} is not a plain date; write it YYYY-MM-DD")
    # Where a DST change happens at midnight, the day starts at the first instant that
    # exists (shift forward) and, when midnight occurs twice, at its earlier occurrence.
    local = {"nonexistent": "shift_forward", "ambiguous": True}
    local_start = start.tz_localize(tz, **local)
    local_end = (start + pd.Timedelta(days=1)).tz_localize(tz, **local)
    return (
        local_start.tz_convert("UTC").to_pydatetime(),
        local_end.tz_convert("UTC").to_pydatetime(),
    )


# --- shared derivations -------------------------------------------------------------------


def _local_day(created: pd.Series, tz: str) -> pd.Series:
    """Local midnight (naive datetime64) of each creation instant in ``tz``.

    Grouping on a datetime64 is much faster than on 1,000,000 date strings; the key is
    turned into text only on the (few) output rows.
    """
    return created.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()


def _minutes_or_derived(stored: pd.Series, start: pd.Series, end: pd.Series) -> pd.Series:
    """Stored minutes where present, else (end - start) in minutes rounded to 2 places; NaN without end."""
    derived = ((end - start).dt.total_seconds() / 60.0).round(2)
    minutes = stored.astype("float64").where(stored.notna(), derived)
    return minutes.where(end.notna())


def _key_text(values: pd.Series) -> pd.Series:
    """Group key as text, the empty string standing for 'not set'."""
    return values.astype(object).where(values.notna(), "").astype(str)


def _base(frame: pd.DataFrame, tz: str, clocks: Clocks | None = None) -> pd.DataFrame:
    """The columns every rollup needs, derived once (``due``: the SLA due instant)."""
    validate_lead_facts(frame)
    _check_timezone(tz)
    created = frame["CreatedDate"]
    responded_at = frame["First_Response_At__c"]
    ttfr = _minutes_or_derived(frame["Time_to_First_Response__c"], created, responded_at)
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


def _wall_clock_due(frame: pd.DataFrame) -> pd.Series:
    sla_minutes = frame["SLA_Minutes"].astype("float64").fillna(DEFAULT_SLA_MINUTES)
    return frame["CreatedDate"] + pd.to_timedelta(sla_minutes, unit="min")


def _stored_clocks(frame: pd.DataFrame, ttfr: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Due time and business minutes as the ledger stored them. A lead without them was
    measured on 24x7 time when it has no calendar (due = created + SLA, business minutes =
    wall-clock minutes); with a calendar but no stored minutes they are unknown (NaN)."""
    no_calendar = frame["SLA_Calendar"].isna() | (frame["SLA_Calendar"] == "")
    due = frame["SLA_Due_At"].where(frame["SLA_Due_At"].notna(), _wall_clock_due(frame))
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


def _finish(name: str, result: pd.DataFrame) -> pd.DataFrame:
    """Day as text, schema column order and dtypes, sorted by the key columns, fresh index."""
    schema = ROLLUP_SCHEMAS[name]
    result = result.copy()
    result["day"] = result["day"].dt.strftime("%Y-%m-%d") if len(result) else result["day"]
    result = result[list(schema)].astype(schema)
    keys = [column for column, dtype in schema.items() if dtype == _TEXT]
    return result.sort_values(keys, kind="mergesort").reset_index(drop=True)


def empty_rollup(name: str) -> pd.DataFrame:
    """Rollup ``name`` with no rows: its columns in order, with their dtypes."""
    if name not in ROLLUP_SCHEMAS:
        raise LeadFactsError(f"no rollup named {name!r}; the rollups are {list(ROLLUP_NAMES)}")
    return _empty(name)


def _empty(name: str) -> pd.DataFrame:
    schema = ROLLUP_SCHEMAS[name]
    return pd.DataFrame({column: pd.Series([], dtype=dtype) for column, dtype in schema.items()})


def _group_stats(
    by: list[pd.Series],
    flag: pd.Series,
    values: pd.Series,
    names: tuple[str, str],
    qs: Mapping[str, float],
    more: Mapping[str, tuple[pd.Series, Mapping[str, float]]] | None = None,
) -> pd.DataFrame:
    """Per group of ``by``: row count, count of ``flag``, and linear-interpolated percentiles
    of ``values`` (NaN skipped, so only flagged rows count), one column per name in ``qs``;
    likewise for each further (values, qs) in ``more``.

    One GroupBy serves all of them, so the (costly) group keys are factorized once.
    """
    series = {"flag": flag, "value": values}
    series |= {name: column for name, (column, _) in (more or {}).items()}
    grouped = pd.DataFrame(series).groupby(by, sort=False)
    table = grouped["flag"].agg(["size", "sum"])
    table.columns = list(names)
    for column, wanted in [("value", qs), *((n, q) for n, (_, q) in (more or {}).items())]:
        percentiles = grouped[column].quantile(list(wanted.values())).unstack()
        percentiles.columns = list(wanted)
        table = table.join(percentiles)
    return table.reset_index()


_TTFR_QS = {"ttfr_p50": 0.50, "ttfr_p90": 0.90, "ttfr_p95": 0.95}
_BUSINESS_QS = {"ttfr_business_p50": 0.50, "ttfr_business_p90": 0.90, "ttfr_business_p95": 0.95}
_LATENCY_QS = {"latency_p50": 0.50, "latency_p95": 0.95}


def _ttfr_table(base: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    by = [base[key] for key in keys]
    table = _group_stats(
        by,
        base["responded"],
        base["ttfr"],
        ("leads", "responded"),
        _TTFR_QS,
        more={"business": (base["ttfr_business"], _BUSINESS_QS)},
    )
    table["coverage"] = table["responded"] / table["leads"]
    return table


# --- the rollups ----------------------------------------------------------------------


def ttfr_overall(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Per creation day: leads, responded, coverage and TTFR p50/p90/p95 (minutes), in
    wall-clock minutes and in business minutes."""
    return _ttfr_overall(frame, _base(frame, tz))


def ttfr_by_owner(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Like ``ttfr_overall`` per (day, current ``OwnerId``)."""
    return _ttfr_by_owner(frame, _base(frame, tz))


def sla(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Per creation day: leads met, breached and pending as of ``as_of``, and breach %."""
    as_of_utc = _check_as_of(as_of)
    return _sla(frame, _base(frame, tz), as_of_utc)


def sla_by_owner(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Like ``sla`` per (day, current ``OwnerId``)."""
    as_of_utc = _check_as_of(as_of)
    return _sla_by_owner(frame, _sla_states(frame, _base(frame, tz), as_of_utc))


def sla_by_rule(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Like ``sla`` per (day, routing policy version, rule)."""
    as_of_utc = _check_as_of(as_of)
    return _sla_by_rule(frame, _sla_states(frame, _base(frame, tz), as_of_utc))


def assignment_latency(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Per (day, routing policy version, rule): leads, assigned and latency p50/p95 (minutes)."""
    return _assignment_latency(frame, _base(frame, tz))


def template_usage(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Per (day, recommended template): recommended, applied (recommendation taken), acceptance."""
    return _template_usage(frame, _base(frame, tz))


def compute_all(
    frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC", clocks: Clocks | None = None
) -> dict[str, pd.DataFrame]:
    """Every rollup, keyed by the names in ``ROLLUP_NAMES`` (input validated and derived once).

    ``clocks`` (calendar name -> ``BusinessClock``): recompute every lead's SLA due time
    and business minutes from its ``SLA_Calendar`` instead of reading the stored ones."""
    as_of_utc = _check_as_of(as_of)
    base = _base(frame, tz, clocks)
    states = _sla_states(frame, base, as_of_utc)  # shared by the three SLA rollups
    return {
        "ttfr_overall": _ttfr_overall(frame, base),
        "ttfr_by_owner": _ttfr_by_owner(frame, base),
        "sla": _sla_table("sla", states, []),
        "sla_by_owner": _sla_by_owner(frame, states),
        "sla_by_rule": _sla_by_rule(frame, states),
        "assignment_latency": _assignment_latency(frame, base),
        "template_usage": _template_usage(frame, base),
    }


# Each ``_rollup(frame, base)`` takes the validated frame and its ``_base``; none mutates them.


def _ttfr_overall(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    if base.empty:
        return _empty("ttfr_overall")
    return _finish("ttfr_overall", _ttfr_table(base, ["day"]))


def _ttfr_by_owner(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    if base.empty:
        return _empty("ttfr_by_owner")
    keyed = base.assign(owner_id=_key_text(frame["OwnerId"]))
    return _finish("ttfr_by_owner", _ttfr_table(keyed, ["day", "owner_id"]))


def _sla(frame: pd.DataFrame, base: pd.DataFrame, as_of_utc: pd.Timestamp) -> pd.DataFrame:
    return _sla_table("sla", _sla_states(frame, base, as_of_utc), [])


def _sla_states(frame: pd.DataFrame, base: pd.DataFrame, as_of_utc: pd.Timestamp) -> pd.DataFrame:
    """Per lead: its day and whether it is met, breached or pending as of ``as_of_utc``."""
    met, breached, pending = sla_flags(
        base["responded"], frame["First_Response_At__c"], base["due"], as_of_utc
    )
    return pd.DataFrame(
        {"day": base["day"], "met": met, "breached": breached, "pending": pending},
        index=frame.index,
    )


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


def _sla_by_owner(frame: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    return _sla_table("sla_by_owner", states, [_key_text(frame["OwnerId"]).rename("owner_id")])


def _sla_by_rule(frame: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    keys = [
        _key_text(frame["Routing_Policy_Version__c"]).rename("policy_version"),
        _key_text(frame["Routing_Rule__c"]).rename("rule"),
    ]
    return _sla_table("sla_by_rule", states, keys)


def _sla_table(name: str, states: pd.DataFrame, keys: list[pd.Series]) -> pd.DataFrame:
    """Met, breached, pending and breach % per (day, *keys)."""
    if states.empty:
        return _empty(name)
    by = [states["day"], *keys]
    table = states[["met", "breached", "pending"]].groupby(by, sort=False).sum().reset_index()
    settled = table["met"] + table["breached"]
    # 0 settled leads: the group has no breach rate yet (NaN), rather than a misleading 0 %.
    table["breach_pct"] = (100.0 * table["breached"] / settled).where(settled > 0)
    return _finish(name, table)


def _assignment_latency(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    if base.empty:
        return _empty("assignment_latency")
    assigned_at = frame["Owner_Assigned_At__c"]
    latency = _minutes_or_derived(
        frame["Assignment_Latency_Minutes__c"], frame["CreatedDate"], assigned_at
    )
    by = [
        base["day"],
        _key_text(frame["Routing_Policy_Version__c"]).rename("policy_version"),
        _key_text(frame["Routing_Rule__c"]).rename("rule"),
    ]
    table = _group_stats(by, assigned_at.notna(), latency, ("leads", "assigned"), _LATENCY_QS)
    return _finish("assignment_latency", table)


def _template_usage(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    recommended = frame["Template_Recommended__c"]
    has_recommendation = recommended.notna()
    if not has_recommendation.any():
        return _empty("template_usage")
    applied = frame["Template_Applied__c"]
    rows = pd.DataFrame(
        {
            "day": base["day"],
            "template_id": recommended.astype(object),
            "applied": applied.notna() & (applied == recommended),
        }
    )[has_recommendation.to_numpy()]
    table = rows.groupby(["day", "template_id"], sort=False).agg(
        recommended=("applied", "size"), applied=("applied", "sum")
    )
    table["acceptance"] = table["applied"] / table["recommended"]
    return _finish("template_usage", table.reset_index())


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
    as_of_utc = _check_as_of(as_of)
    wall = _wall_clock_due(frame)
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


# --- data checks -----------------------------------------------------------------------


def reconcile(
    frame: pd.DataFrame, rollups: Mapping[str, pd.DataFrame], *, tz: str = "UTC"
) -> list[str]:
    """Problems where rollup counts do not add up to the ledger's counts; empty when consistent.

    ``tz`` must be the timezone the rollups were computed with.
    """
    missing = [name for name in ROLLUP_NAMES if name not in rollups]
    if missing:
        return [f"rollups {missing} are missing (expected {list(ROLLUP_NAMES)})"]
    problems = _schema_problems(rollups)
    if problems:
        return problems
    base = _base(frame, tz)
    base["day"] = base["day"].dt.strftime("%Y-%m-%d")
    base["assigned"] = frame["Owner_Assigned_At__c"].notna()
    base["recommended"] = frame["Template_Recommended__c"].notna()
    ledger = base.groupby("day")[["responded", "assigned", "recommended"]].sum()
    ledger.insert(0, "leads", base.groupby("day").size())
    checks = [
        ("ttfr_overall", "leads", "leads"),
        ("ttfr_overall", "responded", "responded"),
        ("ttfr_by_owner", "leads", "leads"),
        ("ttfr_by_owner", "responded", "responded"),
        ("sla", ("met", "breached", "pending"), "leads"),
        ("sla_by_owner", ("met", "breached", "pending"), "leads"),
        ("sla_by_rule", ("met", "breached", "pending"), "leads"),
        ("assignment_latency", "leads", "leads"),
        ("assignment_latency", "assigned", "assigned"),
        ("template_usage", "recommended", "recommended"),
    ]
    for name, columns, ledger_column in checks:
        problems += _count_problems(name, rollups[name], columns, ledger[ledger_column])
    return problems


def _schema_problems(rollups: Mapping[str, pd.DataFrame]) -> list[str]:
    problems = []
    for name, schema in ROLLUP_SCHEMAS.items():
        columns = list(rollups[name].columns)
        if columns != list(schema):
            problems.append(f"{name} has columns {columns}, expected {list(schema)}")
    return problems


def _count_problems(
    name: str, table: pd.DataFrame, columns: str | tuple[str, ...], expected: pd.Series
) -> list[str]:
    """Compare the per-day sum of ``columns`` in ``table`` with the ledger's per-day count."""
    wanted = list(columns) if isinstance(columns, tuple) else [columns]
    got = table.groupby("day")[wanted].sum().sum(axis=1)
    both = pd.concat({"rollup": got, "ledger": expected}, axis=1).fillna(0).astype("int64")
    wrong = both[both["rollup"] != both["ledger"]]
    label = " + ".join(wanted)
    # Only mismatching days reach this loop: a handful of messages, not one per lead.
    return [
        f"{name} day {day}: {label} = {row.rollup}, but the ledger has {row.ledger}"
        for day, row in wrong.iterrows()
    ]


# --- presentation ----------------------------------------------------------------------


def markdown_table(df: pd.DataFrame, max_rows: int = 20) -> str:
    """A GitHub-flavoured Markdown table of the first ``max_rows`` rows (for Dagster metadata)."""
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    header = "| " + " | ".join(str(column) for column in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    shown = df.head(max_rows)
    body = [
        "| " + " | ".join(_cell(value) for value in row) + " |"
        for row in shown.itertuples(index=False, name=None)
    ]
    lines = [header, rule, *body]
    if len(df) > len(shown):
        lines.append(f"\n… {len(df) - len(shown)} more rows ({len(df)} in all)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}" if abs(value) < 1e4 else f"{float(value):.0f}"
    return str(value).replace("|", "\\|")
