"""Business-hours arithmetic against values worked out by hand, and its properties.

Calendars used (local wall time):
  NA  America/New_York, Mon-Fri 09:00-17:00, holiday 2026-11-26 (Thanksgiving, a Thursday)
  EU  Europe/Berlin,    Mon-Fri 09:00-17:00
DST in 2026: New York springs forward Sun 2026-03-08 and falls back Sun 2026-11-01;
Berlin springs forward Sun 2026-03-29 and falls back Sun 2026-10-25. So 09:00 New York is
14:00Z in winter (EST, -5) and 13:00Z in summer (EDT, -4); 09:00 Berlin is 08:00Z in winter
(CET, +1) and 07:00Z in summer (CEST, +2).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core.policy.calendars import WEEKDAYS, Calendar
from kpi_pipeline.core.workloads import business_hours
from kpi_pipeline.core.workloads.business_hours import (
    ALWAYS_OPEN,
    BusinessClock,
    CalendarError,
    from_ns,
    minutes_2dp,
    to_ns,
)
from kpi_pipeline.core.workloads.first_touch import ttfr_minutes

WORKWEEK = ("mon", "tue", "wed", "thu", "fri")


def clock(tz: str, hours: dict, holidays=()) -> BusinessClock:
    return BusinessClock.from_calendar(Calendar(timezone=tz, hours=hours, holidays=holidays))


NA = clock("America/New_York", {d: (("09:00", "17:00"),) for d in WORKWEEK}, ("2026-11-26",))
EU = clock("Europe/Berlin", {d: (("09:00", "17:00"),) for d in WORKWEEK})


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# (case, clock, created, SLA minutes, due by hand, response, business minutes by hand)
CASES = [
    # Fri 16:30 EST: 30 min on Friday, the weekend is closed, 30 more on Monday from 09:00.
    # Response Mon 10:00 EST = 30 + 60 open minutes (3930 wall-clock minutes).
    ("weekend", NA, "2026-11-20T21:30Z", 60, "2026-11-23T14:30Z", "2026-11-23T15:00Z", 90.0),
    # Wed 16:00 EST: 60 min Wednesday, Thanksgiving closed, 60 min Friday -> Fri 10:00 EST.
    # Response Fri 09:15 EST = 60 + 15.
    ("holiday", NA, "2026-11-25T21:00Z", 120, "2026-11-27T15:00Z", "2026-11-27T14:15Z", 75.0),
    # Fri 2026-03-06 16:00 EST; Monday is EDT, so it opens at 13:00Z, not 14:00Z.
    # Due Mon 10:00 EDT = 14:00Z. Response Mon 09:30 EDT (13:30Z) = 60 + 30.
    ("DST spring NY", NA, "2026-03-06T21:00Z", 120, "2026-03-09T14:00Z", "2026-03-09T13:30Z", 90.0),
    # Fri 2026-10-30 16:00 EDT (20:00Z); Monday 2026-11-02 is EST and opens at 14:00Z.
    # Due Mon 10:00 EST = 15:00Z. Response Mon 09:45 EST (14:45Z) = 60 + 45.
    (
        "DST autumn NY",
        NA,
        "2026-10-30T20:00Z",
        120,
        "2026-11-02T15:00Z",
        "2026-11-02T14:45Z",
        105.0,
    ),
    # Fri 2026-10-23 16:00 CEST (14:00Z): 60 min to 17:00 CEST (15:00Z); Monday 2026-10-26 is
    # CET and opens at 08:00Z. Due 10:00 CET = 09:00Z. Response 09:30 CET (08:30Z) = 60 + 30.
    (
        "DST autumn Berlin",
        EU,
        "2026-10-23T14:00Z",
        120,
        "2026-10-26T09:00Z",
        "2026-10-26T08:30Z",
        90.0,
    ),
    # Fri 2026-03-27 16:00 CET (15:00Z): 60 min to 17:00 CET; Monday 2026-03-30 is CEST and
    # opens at 07:00Z. Due 10:00 CEST = 08:00Z. Response 09:10 CEST (07:10Z) = 60 + 10.
    (
        "DST spring Berlin",
        EU,
        "2026-03-27T15:00Z",
        120,
        "2026-03-30T08:00Z",
        "2026-03-30T07:10Z",
        70.0,
    ),
    # Created Tue 06:00 EST, before opening: the clock starts at 09:00. Due 10:00 EST.
    # Response 09:20 EST = 20 open minutes (200 wall-clock minutes).
    (
        "created before hours",
        NA,
        "2026-11-17T11:00Z",
        60,
        "2026-11-17T15:00Z",
        "2026-11-17T14:20Z",
        20.0,
    ),
    # Created Tue 20:00 EST, after closing: nothing counts until Wed 09:00. Due Wed 10:00 EST.
    (
        "created after hours",
        NA,
        "2026-11-18T01:00Z",
        60,
        "2026-11-18T15:00Z",
        "2026-11-18T14:05Z",
        5.0,
    ),
    # Created Tue 16:30 EST, answered 19:00 EST the same evening: only 16:30-17:00 counts.
    # Due Wed 09:30 EST, so the evening answer met the SLA although 150 wall-clock minutes passed.
    (
        "response after hours",
        NA,
        "2026-11-17T21:30Z",
        60,
        "2026-11-18T14:30Z",
        "2026-11-18T00:00Z",
        30.0,
    ),
    # Created and answered on Saturday: no open minute at all.
    (
        "all outside hours",
        NA,
        "2026-11-21T15:00Z",
        60,
        "2026-11-23T15:00Z",
        "2026-11-21T18:00Z",
        0.0,
    ),
]


@pytest.mark.parametrize(
    ("case", "clk", "created", "sla", "due", "response", "business"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_due_time_and_business_minutes_by_hand(case, clk, created, sla, due, response, business):
    assert clk.add_open_minutes(z(created), sla) == z(due)
    assert clk.open_minutes(z(created), z(response)) == business
    # The array path gives the same answers as the one-lead path.
    starts, ends = np.array([to_ns(z(created))]), np.array([to_ns(z(response))])
    assert clk.open_ns_array(starts, ends)[0] == round(business * 60e9)
    assert clk.add_open_ns_array(starts, np.array([float(sla)]))[0] == to_ns(z(due))


def test_wall_clock_minutes_of_the_cases_are_larger():
    # Sanity of the hand values: e.g. the weekend case is 3930 wall-clock minutes.
    assert ttfr_minutes(z("2026-11-20T21:30Z"), z("2026-11-23T15:00Z")) == 3930.0
    assert ttfr_minutes(z("2026-11-17T21:30Z"), z("2026-11-18T00:00Z")) == 150.0


def test_a_due_time_at_closing_is_closing_time_and_a_response_then_is_met():
    # Tue 16:00 EST + 60 open minutes = 17:00 EST exactly (not Wednesday 09:00).
    assert NA.add_open_minutes(z("2026-11-17T21:00Z"), 60) == z("2026-11-17T22:00Z")


def test_days_that_change_clocks_are_as_long_as_they_really_are():
    always = clock("America/New_York", {d: (("00:00", "24:00"),) for d in WEEKDAYS})
    # Spring-forward Sunday has 23 hours, fall-back Sunday 25 (local midnight to midnight).
    assert always.open_minutes(z("2026-03-08T05:00Z"), z("2026-03-09T04:00Z")) == 23 * 60
    assert always.open_minutes(z("2026-11-01T04:00Z"), z("2026-11-02T05:00Z")) == 25 * 60
    # 01:00-02:00 on the fall-back Sunday: 01:00 EDT (05:00Z) to 02:00 EST (07:00Z) = 2 hours.
    night = clock("America/New_York", {"sun": (("01:00", "02:00"),)})
    assert night.open_minutes(z("2026-11-01T00:00Z"), z("2026-11-02T00:00Z")) == 120.0
    # 02:30-04:00 on the spring-forward Sunday: 02:30 does not exist, so the interval opens
    # when the clocks jump (03:00 EDT = 07:00Z) and closes 04:00 EDT (08:00Z): 60 minutes.
    gap = clock("America/New_York", {"sun": (("02:30", "04:00"),)})
    assert gap.open_minutes(z("2026-03-08T00:00Z"), z("2026-03-09T00:00Z")) == 60.0
    # Berlin's fall-back Sunday: 02:00-03:00 happens twice, the interval is 2 real hours.
    berlin = clock("Europe/Berlin", {"sun": (("02:00", "03:00"),)})
    assert berlin.open_minutes(z("2026-10-24T00:00Z"), z("2026-10-26T00:00Z")) == 120.0


def test_lunch_breaks_and_holidays_per_year():
    sydney = clock(
        "Australia/Sydney",
        {d: (("08:30", "12:30"), ("13:30", "17:30")) for d in WORKWEEK},
        {"2026": ["12-25", "12-28"]},
    )
    # Mon 2026-11-23 12:00 AEDT (01:00Z): 30 min to lunch, lunch closed, 30 min from 13:30.
    assert sydney.add_open_minutes(z("2026-11-23T01:00Z"), 60) == z("2026-11-23T03:00Z")
    # Thu 2026-12-24 17:00 AEDT (06:00Z) + 60: 30 min on Thursday; Fri 25th and Mon 28th are
    # holidays, the weekend is closed; 30 min on Tue 29th from 08:30 -> 09:00 AEDT = 22:00Z Mon.
    assert sydney.add_open_minutes(z("2026-12-24T06:00Z"), 60) == z("2026-12-28T22:00Z")


def test_always_open_is_the_wall_clock():
    start = z("2026-11-20T21:30Z")
    assert ALWAYS_OPEN.add_open_minutes(start, 90) == start + timedelta(minutes=90)
    assert ALWAYS_OPEN.open_minutes(start, start + timedelta(minutes=3930)) == 3930.0


def test_a_calendar_with_no_open_time_in_reach_is_refused_with_its_name():
    closed = BusinessClock(
        timezone="UTC",
        weekly=[((540, 600),)] + [()] * 6,
        holidays=frozenset(date(2026, 1, 5) + timedelta(weeks=w) for w in range(700)),
        name="all-mondays-off",
    )
    with pytest.raises(CalendarError, match="all-mondays-off"):
        closed.add_open_minutes(z("2026-01-01T00:00Z"), 60)


# --- properties -------------------------------------------------------------------------------

ZONES = ["America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "UTC"]
START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    hours = {}
    for day in WEEKDAYS:
        cuts = sorted(draw(st.sets(st.integers(0, 48), max_size=4)))  # half hours
        pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
        hours[day] = tuple(
            (f"{a // 2:02d}:{30 * (a % 2):02d}", f"{b // 2:02d}:{30 * (b % 2):02d}")
            for a, b in pairs
        )
    if not any(hours.values()):
        hours["wed"] = (("09:00", "17:00"),)
    offsets = draw(st.lists(st.integers(0, 400), max_size=8, unique=True))
    holidays = tuple((START.date() + timedelta(days=o)).isoformat() for o in offsets)
    return Calendar(timezone=draw(st.sampled_from(ZONES)), hours=hours, holidays=holidays)


moments = st.integers(0, 365 * 24 * 60 * 60).map(lambda s: START + timedelta(seconds=s))


@settings(max_examples=150, deadline=None)
@given(calendar=calendars(), created=moments, seconds=st.integers(0, 30 * 24 * 3600))
def test_business_minutes_never_exceed_wall_clock_minutes(calendar, created, seconds):
    clk = BusinessClock.from_calendar(calendar)
    responded = created + timedelta(seconds=seconds)
    business = clk.open_minutes(created, responded)
    assert 0 <= business <= ttfr_minutes(created, responded)


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    created=moments,
    microseconds=st.integers(0, 60 * 24 * 3600 * 10**6),
)
def test_a_24x7_calendar_counts_every_wall_clock_minute(zone, created, microseconds):
    clk = clock(zone, {d: (("00:00", "24:00"),) for d in WEEKDAYS})
    responded = created + timedelta(microseconds=microseconds)
    assert clk.open_minutes(created, responded) == ttfr_minutes(created, responded)
    minutes = microseconds / 60e6
    assert clk.add_open_minutes(created, minutes) == ALWAYS_OPEN.add_open_minutes(created, minutes)


@settings(max_examples=100, deadline=None)
@given(calendar=calendars(), created=moments, minutes=st.integers(1, 20_000))
def test_the_due_time_is_exactly_the_sla_of_open_time_later(calendar, created, minutes):
    clk = BusinessClock.from_calendar(calendar)
    try:
        due = clk.add_open_minutes(created, minutes)
    except CalendarError:
        # Only when the calendar truly lacks that much open time within the search limit
        # (a drawn calendar open 30 minutes a week needs ten years for 15,691 minutes).
        limit = created + timedelta(days=business_hours._MAX_SEARCH_DAYS)
        assert clk.open_minutes(created, limit) < minutes
        return
    assert due > created
    assert clk.open_minutes(created, due) == minutes
    # ... and the earliest such instant: a second before it, less open time has passed.
    assert clk.open_minutes(created, due - timedelta(seconds=1)) < minutes


@settings(max_examples=150, deadline=None)
@given(
    calendar=calendars(),
    created=moments,
    seconds=st.integers(-3600, 30 * 24 * 3600),
    minutes=st.floats(-5, 20_000, allow_nan=False),
    widened_first=st.booleans(),
)
def test_one_lead_answers_as_the_arrays_do(calendar, created, seconds, minutes, widened_first):
    """The one-lead questions (Python lists, ``bisect``) give exactly what the array
    questions (numpy) give for the same lead, also on a clock whose table other questions
    built first, and on the 24x7 clock."""
    end = created + timedelta(seconds=seconds)
    clk = BusinessClock.from_calendar(calendar)
    if widened_first:
        clk.add_open_minutes(created + timedelta(days=40), 600)
    start_ns, end_ns = np.array([to_ns(created)]), np.array([to_ns(end)])
    for each in (clk, ALWAYS_OPEN):
        due_ns = each.add_open_ns_array(start_ns, np.array([minutes]))[0]
        assert each.add_open_minutes(created, minutes) == from_ns(int(due_ns))
        open_ns = each.open_ns_array(start_ns, end_ns)[0]
        assert each.open_minutes(created, end) == minutes_2dp(int(open_ns))
