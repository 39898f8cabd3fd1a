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

The per-lead columns these rules describe (day, TTFR, due instant, SLA state) are derived
once in ``per_lead``; this module groups them into the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import pandas as pd

from kpi_pipeline.core.kpis.lead_facts import LeadFactsError, check_as_of
from kpi_pipeline.core.kpis.per_lead import (
    Clocks,
    key_text,
    minutes_or_derived,
    per_lead_base,
    sla_flags,
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
    return _ttfr_overall(frame, per_lead_base(frame, tz))


def ttfr_by_owner(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Like ``ttfr_overall`` per (day, current ``OwnerId``)."""
    return _ttfr_by_owner(frame, per_lead_base(frame, tz))


def sla(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Per creation day: leads met, breached and pending as of ``as_of``, and breach %."""
    as_of_utc = check_as_of(as_of)
    return _sla(frame, per_lead_base(frame, tz), as_of_utc)


def sla_by_owner(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Like ``sla`` per (day, current ``OwnerId``)."""
    as_of_utc = check_as_of(as_of)
    return _sla_by_owner(frame, _sla_states(frame, per_lead_base(frame, tz), as_of_utc))


def sla_by_rule(frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC") -> pd.DataFrame:
    """Like ``sla`` per (day, routing policy version, rule)."""
    as_of_utc = check_as_of(as_of)
    return _sla_by_rule(frame, _sla_states(frame, per_lead_base(frame, tz), as_of_utc))


def assignment_latency(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Per (day, routing policy version, rule): leads, assigned and latency p50/p95 (minutes)."""
    return _assignment_latency(frame, per_lead_base(frame, tz))


def template_usage(frame: pd.DataFrame, *, tz: str = "UTC") -> pd.DataFrame:
    """Per (day, recommended template): recommended, applied (recommendation taken), acceptance."""
    return _template_usage(frame, per_lead_base(frame, tz))


def compute_all(
    frame: pd.DataFrame, *, as_of: datetime, tz: str = "UTC", clocks: Clocks | None = None
) -> dict[str, pd.DataFrame]:
    """Every rollup, keyed by the names in ``ROLLUP_NAMES`` (input validated and derived once).

    ``clocks`` (calendar name -> ``BusinessClock``): recompute every lead's SLA due time
    and business minutes from its ``SLA_Calendar`` instead of reading the stored ones."""
    as_of_utc = check_as_of(as_of)
    base = per_lead_base(frame, tz, clocks)
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


# Each ``_rollup(frame, base)`` takes the validated frame and its ``per_lead_base``; none mutates them.


def _ttfr_overall(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    if base.empty:
        return _empty("ttfr_overall")
    return _finish("ttfr_overall", _ttfr_table(base, ["day"]))


def _ttfr_by_owner(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    if base.empty:
        return _empty("ttfr_by_owner")
    keyed = base.assign(owner_id=key_text(frame["OwnerId"]))
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


def _sla_by_owner(frame: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    return _sla_table("sla_by_owner", states, [key_text(frame["OwnerId"]).rename("owner_id")])


def _sla_by_rule(frame: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    keys = [
        key_text(frame["Routing_Policy_Version__c"]).rename("policy_version"),
        key_text(frame["Routing_Rule__c"]).rename("rule"),
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
    latency = minutes_or_derived(
        frame["Assignment_Latency_Minutes__c"], frame["CreatedDate"], assigned_at
    )
    by = [
        base["day"],
        key_text(frame["Routing_Policy_Version__c"]).rename("policy_version"),
        key_text(frame["Routing_Rule__c"]).rename("rule"),
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
