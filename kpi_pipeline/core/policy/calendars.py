"""Business-hours calendars of a routing policy: the model and its semantic checks (pure).

A calendar is a timezone, open intervals per weekday in local wall time, and closed days
(holidays). The policy names calendars in ``$.calendars``; each rule may name one, the
policy may name a ``default_calendar``, and a rule with neither runs on 24x7 (wall-clock)
time as before calendars existed. The arithmetic on open time is
``kpi_pipeline.core.workloads.business_hours``.

Holidays come in three forms: a list of ISO dates ``["2026-12-25", ...]``, a list per
year ``{"2026": ["12-25", ...]}``, or a country's public holidays (optionally of one
subdivision) from the ``holidays`` library, with explicit extra dates beside them:
``{"country": "US", "subdivision": "NY", "dates": ["2026-11-27"]}``. The first two state
exactly which days are closed and end where the list ends; a country set covers every
year (the library computes movable feasts and observed days), and is exactly as stable as
the pinned ``holidays`` version.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order


def wall_minutes(text: str) -> int:
    """``"09:30"`` -> 570; ``"24:00"`` -> 1440 (midnight at the end of the day)."""
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


class CountryHolidays(BaseModel):
    """A country's (or one subdivision's) public holidays, plus explicit extra dates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    country: str
    subdivision: str | None = None
    dates: tuple[str, ...] = ()


class ClosedDays(Container[date]):
    """Explicit dates, and a country's holidays for whatever year is asked about."""

    def __init__(self, dates: frozenset[date], country: Any = None) -> None:
        self.dates = dates
        self.country = country  # a holidays.HolidayBase; it fills in years on first use

    def __contains__(self, day: object) -> bool:
        return day in self.dates or (self.country is not None and day in self.country)


class Calendar(BaseModel):
    model_config = ConfigDict(frozen=True)

    timezone: str
    hours: dict[str, tuple[tuple[str, str], ...]]
    holidays: CountryHolidays | tuple[str, ...] | dict[str, tuple[str, ...]] = ()
    description: str | None = None

    def weekly_minutes(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Open intervals per weekday (Monday first) as minutes after local midnight."""
        return tuple(
            tuple(sorted((wall_minutes(a), wall_minutes(b)) for a, b in self.hours.get(day, ())))
            for day in WEEKDAYS
        )

    def closed_days(self) -> Container[date]:
        """Every closed day: the explicit dates and, for a country set, its holidays."""
        if isinstance(self.holidays, CountryHolidays):
            country = country_holidays(self.holidays.country, self.holidays.subdivision)
            return ClosedDays(self.holiday_dates(), country)
        return self.holiday_dates()

    def holiday_dates(self) -> frozenset[date]:
        """The explicitly listed dates (a country set's own holidays are not listed)."""
        if isinstance(self.holidays, CountryHolidays):
            return frozenset(date.fromisoformat(text) for text in self.holidays.dates)
        if isinstance(self.holidays, Mapping):
            return frozenset(
                date.fromisoformat(f"{year}-{month_day}")
                for year, days in self.holidays.items()
                for month_day in days
            )
        return frozenset(date.fromisoformat(text) for text in self.holidays)


def calendar_faults(path: str, raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(JSON path, message) for every fault of one calendar; assumes it passed the schema."""
    faults: list[tuple[str, str]] = []
    try:
        ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        faults.append(
            (
                f"{path}.timezone",
                f"unknown IANA timezone {raw['timezone']!r}; use a tz database name such as "
                "'America/New_York', 'Europe/Berlin' or 'UTC'",
            )
        )
    open_days = 0
    for day, intervals in raw["hours"].items():
        faults += _day_faults(f"{path}.hours.{day}", intervals)
        open_days += bool(intervals)
    if not open_days:
        faults.append(
            (
                f"{path}.hours",
                "no open interval on any weekday, so an SLA on this calendar would never come "
                'due; give at least one, e.g. "mon": [["09:00", "17:00"]]',
            )
        )
    faults += _holiday_faults(f"{path}.holidays", raw.get("holidays", []))
    return faults


def _day_faults(path: str, intervals: list[list[str]]) -> list[tuple[str, str]]:
    faults = []
    spans = []
    for index, (opens, closes) in enumerate(intervals):
        start, end = wall_minutes(opens), wall_minutes(closes)
        if start >= end:
            faults.append(
                (
                    f"{path}[{index}]",
                    f"opens at {opens} but closes at {closes}; an interval must close after it "
                    "opens (split one that crosses midnight into this day up to 24:00 and the "
                    "next day from 00:00)",
                )
            )
            continue
        spans.append((start, end, index, opens, closes))
    spans.sort()
    # Compare each interval with the one reaching furthest so far, so an interval inside a
    # long one is caught even when a short one sits between them.
    reach = None
    for span in spans:
        start, end, index, opens, closes = span
        if reach is not None and start < reach[1]:
            _, _, other, opens_o, closes_o = reach
            faults.append(
                (
                    f"{path}[{max(index, other)}]",
                    f"{opens}-{closes} overlaps {opens_o}-{closes_o} "
                    f"({path}[{min(index, other)}]); merge them into one interval or make "
                    "one end where the next begins",
                )
            )
        if reach is None or end > reach[1]:
            reach = span
    return faults


def country_holidays(country: str, subdivision: str | None = None) -> Any:
    """The ``holidays`` library's set for a country (ISO 3166-1 alpha-2) and subdivision;
    years are computed on first use. Observed days (a Saturday holiday moved to Friday)
    are included, as the library defines them per country."""
    import holidays as holiday_sets  # only policies with a country set pay for the import

    return holiday_sets.country_holidays(country, subdiv=subdivision)


def _country_faults(path: str, holidays: Mapping[str, Any]) -> list[tuple[str, str]]:
    import holidays as holiday_sets

    faults: list[tuple[str, str]] = []
    unknown = set(holidays) - {"country", "subdivision", "dates"}
    for key in sorted(unknown):
        faults.append(
            (f"{path}.{key}", "unknown key; a country set has country, subdivision and dates")
        )
    supported: dict[str, list[str]] = holiday_sets.list_supported_countries()
    country = holidays["country"]
    if not isinstance(country, str) or country not in supported:
        faults.append(
            (
                f"{path}.country",
                f"{country!r} is not a country the holidays library "
                f"{holiday_sets.__version__} knows; use an ISO 3166-1 alpha-2 code such as "
                "'US', 'DE' or 'AU' (python -c 'import holidays; "
                "print(sorted(holidays.list_supported_countries()))')",
            )
        )
    subdivision = holidays.get("subdivision")
    if country in supported and subdivision is not None and subdivision not in supported[country]:
        known = ", ".join(supported[country]) or "none"
        faults.append(
            (
                f"{path}.subdivision",
                f"{subdivision!r} is not a subdivision of {country} ({known})",
            )
        )
    dates = holidays.get("dates", [])
    if not isinstance(dates, list):
        return [*faults, (f"{path}.dates", 'must be a list of dates, e.g. ["2026-11-27"]')]
    return faults + _holiday_faults(f"{path}.dates", dates)


def _holiday_faults(path: str, holidays: Any) -> list[tuple[str, str]]:
    faults = []
    if isinstance(holidays, Mapping) and "country" in holidays:
        return _country_faults(path, holidays)
    if isinstance(holidays, list):
        seen: dict[str, int] = {}
        for index, text in enumerate(holidays):
            where = f"{path}[{index}]"
            if not isinstance(text, str) or not _is_iso_date(text):
                faults.append((where, f"{text!r} is not a date; write it YYYY-MM-DD"))
            elif text in seen:
                faults.append((where, f"{text} is already listed at {path}[{seen[text]}]"))
            seen.setdefault(str(text), index)
        return faults
    for year, days in holidays.items():
        where = f"{path}.{year}"
        if not (isinstance(year, str) and len(year) == 4 and year.isdigit()):
            faults.append((where, f"{year!r} is not a year; key each list by YYYY"))
            continue
        if not isinstance(days, list):
            faults.append((where, 'must be a list of month-days, e.g. ["01-01", "12-25"]'))
            continue
        for index, text in enumerate(days):
            if not isinstance(text, str) or not _is_iso_date(f"{year}-{text}"):
                faults.append(
                    (
                        f"{where}[{index}]",
                        f"{text!r} is not a day of {year}; write it MM-DD (e.g. '12-25')",
                    )
                )
    return faults


def _is_iso_date(text: str) -> bool:
    if len(text) != 10:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def calendar_reference_faults(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A rule or the default naming a calendar that ``$.calendars`` does not define."""
    calendars = raw.get("calendars") or {}
    known = ", ".join(sorted(calendars)) or "none defined"
    faults = []

    def check(path: str, name: str | None) -> None:
        if name is not None and name not in calendars:
            faults.append(
                (
                    path,
                    f"calendar {name!r} is not defined in $.calendars ({known}); define it "
                    "there or name one of those",
                )
            )

    check("$.default_calendar", raw.get("default_calendar"))
    for index, rule in enumerate(raw["rules"]):
        check(f"$.rules[{index}].calendar", rule.get("calendar"))
    return faults
