"""Data invariants (pure): what the lead_ledger checks assert, and how the rollups must reconcile
with the ledger.

Each lead invariant returns the ids of the leads that break it (empty when the ledger is
sound); ``reconcile`` returns the problems between a frame and its rollups.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from kpi_pipeline.core.kpis.per_lead import per_lead_base
from kpi_pipeline.core.kpis.rollups import ROLLUP_NAMES, ROLLUP_SCHEMAS

FIRST_RESPONSE_FIELDS = (
    "First_Response_At__c",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Time_to_First_Response__c",
    "Time_to_First_Response_Business_Minutes__c",
)


def negative_or_early_first_response(frame: pd.DataFrame) -> list[str]:
    """TTFR must be ≥ 0 and the first response no earlier than the lead's creation."""
    ttfr_negative = frame["Time_to_First_Response__c"] < 0
    early = frame["First_Response_At__c"].notna() & (
        frame["First_Response_At__c"] < frame["CreatedDate"]
    )
    return sorted(frame.loc[ttfr_negative | early, "Id"].astype(str))


def incomplete_first_response(frame: pd.DataFrame) -> list[str]:
    """The first-response fields are set together or not at all (no response without a source)."""
    present = frame[list(FIRST_RESPONSE_FIELDS)].notna()
    partial = present.any(axis=1) & ~present.all(axis=1)
    return sorted(frame.loc[partial, "Id"].astype(str))


def routed_without_policy_version(frame: pd.DataFrame) -> list[str]:
    """Every routing decision carries the policy version (and rule) that made it."""
    routed = frame["Routing_Rule__c"].notna()
    unversioned = routed & frame["Routing_Policy_Version__c"].isna()
    return sorted(frame.loc[unversioned, "Id"].astype(str))


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
    base = per_lead_base(frame, tz)
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
