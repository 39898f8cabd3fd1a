"""The input of the KPI rollups (pure): the lead-facts frame, one row per lead, as
``Ledger.lead_facts_frame`` returns it; its columns, their types, and the checks that refuse a
frame the rollups cannot trust, naming the column and the fix."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

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


class LeadFactsError(ValueError):
    """The lead-facts frame (or an argument) cannot be rolled up as given."""


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


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise LeadFactsError(
            f"timezone {tz!r} is not an IANA zone name; use e.g. 'UTC' or 'Europe/Paris' "
            "(setting KPI_TIMEZONE)"
        ) from exc
    return tz


def check_as_of(as_of: datetime) -> pd.Timestamp:
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
    check_timezone(tz)
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
