"""Open-time arithmetic on business-hours calendars (pure: no I/O, no clock).

A ``BusinessClock`` turns a calendar (``kpi_pipeline.core.policy.calendars.Calendar``) into a
timeline of open intervals as UTC instants, built day by day in the calendar's timezone
with ``zoneinfo``, and answers two questions, for one lead or for arrays of them:

* ``open_minutes(start, end)``: how much of [start, end) was open (business minutes);
* ``add_open_minutes(start, minutes)``: the instant when ``minutes`` of open time have
  passed after ``start`` (an SLA's due time).

Both work on a cumulative sum of open time over the sorted intervals, so an array of
1,000,000 leads costs two binary searches each (``numpy.searchsorted``), not a walk over
days per lead.

Wall time to instants (why DST is right): each day's intervals are read in the calendar's
timezone on that date, so 09:00-17:00 is 14:00-22:00Z before the US spring change and
13:00-21:00Z after it, and an interval that spans a change is as long as the clocks say
it is in real time (00:00-24:00 on the spring-forward Sunday is 23 hours). A wall time that
occurs twice (autumn) is its first occurrence; one that does not occur (spring) is the
instant the clocks jump, as pandas' ``nonexistent="shift_forward"``.

``ALWAYS_OPEN`` is the 24x7 clock of a policy without calendars: business minutes equal
wall-clock minutes and the due time is created + SLA, exactly as before calendars.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Container, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from kpi_pipeline.core.policy.calendars import Calendar

NS_PER_MINUTE = 60_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SEARCH_DAYS = 3_660  # how far add_open_minutes may look ahead before giving up
_FIRST_HORIZON_DAYS = 21


class CalendarError(ValueError):
    """A calendar that cannot answer (no open time in reach of the question)."""


def to_ns(at: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (exact to the microsecond)."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: business-hours arithmetic needs aware times")
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // 1000)


def minutes_2dp(ns: int) -> float:
    """Nanoseconds as minutes rounded to 2 places, computed exactly as TTFR minutes are
    (``timedelta.total_seconds() / 60``), so a 24x7 clock gives the identical float."""
    return round(timedelta(microseconds=int(ns) // 1000).total_seconds() / 60.0, 2)


def _wanted_ns(minutes: float) -> int:
    """Minutes as whole nanoseconds, rounded half to even as ``numpy.rint`` rounds them."""
    return round(float(minutes) * NS_PER_MINUTE)


class BusinessClock:
    """Open time of one calendar. Tables of intervals are built lazily for the days asked
    about and kept (one contiguous span, widened when a question needs more days)."""

    def __init__(
        self,
        *,
        timezone: str,
        weekly: Sequence[Sequence[tuple[int, int]]],
        holidays: Container[date] = frozenset(),
        name: str | None = None,
    ) -> None:
        if len(weekly) != 7:
            raise ValueError(f"weekly hours need 7 days (Monday first), got {len(weekly)}")
        if not any(weekly):
            raise CalendarError(f"calendar {name!r} has no open interval on any weekday")
        self.name = name
        self.zone = ZoneInfo(timezone)
        self.weekly = tuple(tuple(sorted(day)) for day in weekly)
        self.holidays = holidays
        self._first: date | None = None
        self._last: date | None = None
        self._starts = np.empty(0, dtype="int64")
        self._ends = np.empty(0, dtype="int64")
        self._cum_before = np.empty(0, dtype="int64")  # open ns before interval i
        self._cum_end = np.empty(0, dtype="int64")  # open ns up to the end of interval i
        # The same four as Python lists, for the one-lead questions.
        self._lists: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])

    @classmethod
    def from_calendar(cls, calendar: Calendar, name: str | None = None) -> BusinessClock:
        return cls(
            timezone=calendar.timezone,
            weekly=calendar.weekly_minutes(),
            holidays=calendar.closed_days(),
            name=name,
        )

    # --- one lead -----------------------------------------------------------------------
    # The same integer arithmetic as the array methods below, on Python lists with
    # ``bisect``: a workload step asks about one lead at a time, and numpy's per-call cost
    # on one-element arrays was most of these questions' time (bench/RESULTS.md, Replay).

    def open_minutes(self, start: datetime, end: datetime) -> float:
        """Open minutes in [start, end), 2 places; 0 when end <= start."""
        start_ns = to_ns(start)
        return minutes_2dp(self._open_ns(start_ns, max(to_ns(end), start_ns)))

    def add_open_minutes(self, start: datetime, minutes: float) -> datetime:
        """The instant ``minutes`` of open time after ``start`` (``start`` itself for <= 0)."""
        return from_ns(self._add_open_ns(to_ns(start), _wanted_ns(minutes)))

    def next_open(self, at: datetime) -> datetime:
        """``at`` when the calendar is open then, else the instant it next opens."""
        # One nanosecond of open time later, less that nanosecond: exact in integers.
        return from_ns(self._add_open_ns(to_ns(at), _wanted_ns(1 / NS_PER_MINUTE)) - 1)

    def _open_ns(self, start_ns: int, end_ns: int) -> int:
        """Open nanoseconds in [start, end), for end >= start."""
        self._cover(start_ns, end_ns)
        return self._open_before_one(end_ns) - self._open_before_one(start_ns)

    def _add_open_ns(self, start_ns: int, wanted: int) -> int:
        wanted = max(wanted, 0)
        self._cover(start_ns, start_ns)
        target = self._open_before_one(start_ns) + wanted
        self._reach(target, start_ns, wanted)
        cum_end = self._lists[3]
        index = min(bisect_left(cum_end, target), len(cum_end) - 1)
        starts, _, cum_before, _ = self._lists
        due = starts[index] + (target - cum_before[index])
        return max(due, start_ns) if wanted > 0 else start_ns

    def _open_before_one(self, at_ns: int) -> int:
        starts, ends, cum_before, _ = self._lists
        index = bisect_right(starts, at_ns) - 1
        if index < 0:
            return 0
        return cum_before[index] + min(max(at_ns - starts[index], 0), ends[index] - starts[index])

    # --- arrays (int64 nanoseconds since the epoch) -----------------------------------

    def open_ns_array(self, start_ns: np.ndarray, end_ns: np.ndarray) -> np.ndarray:
        """Open nanoseconds in [start, end) per element; 0 where end <= start."""
        start_ns = np.asarray(start_ns, dtype="int64")
        end_ns = np.maximum(np.asarray(end_ns, dtype="int64"), start_ns)
        if start_ns.size == 0:
            return np.zeros(0, dtype="int64")
        self._cover(int(start_ns.min()), int(end_ns.max()))
        return self._open_before(end_ns) - self._open_before(start_ns)

    def add_open_ns_array(self, start_ns: np.ndarray, minutes: np.ndarray) -> np.ndarray:
        """Instant (ns) after ``minutes`` of open time from each start; the start for <= 0."""
        start_ns = np.asarray(start_ns, dtype="int64")
        wanted = np.rint(np.asarray(minutes, dtype="float64") * NS_PER_MINUTE).astype("int64")
        wanted = np.maximum(wanted, 0)
        if start_ns.size == 0:
            return np.zeros(0, dtype="int64")
        self._cover(int(start_ns.min()), int(start_ns.max()))
        target = self._open_before(start_ns) + wanted
        self._reach(int(target.max()), int(start_ns.max()), int(wanted.max()))
        index = np.searchsorted(self._cum_end, target, side="left")
        index = np.minimum(index, self._cum_end.size - 1)
        due = self._starts[index] + (target - self._cum_before[index])
        return np.where(wanted > 0, np.maximum(due, start_ns), start_ns)

    # --- the table ----------------------------------------------------------------------

    def _reach(self, target: int, latest_start_ns: int, wanted: int) -> None:
        """Widen the table until its open time reaches ``target`` (open ns since its first
        day), doubling the horizon each time; a calendar without that much open time in
        ``_MAX_SEARCH_DAYS`` days after the latest start is an error. Widening keeps every
        earlier value (the table grows at its end only)."""
        horizon = _FIRST_HORIZON_DAYS
        latest = from_ns(latest_start_ns).date()
        while self._cum_end.size == 0 or target > int(self._cum_end[-1]):
            assert self._last is not None
            if (self._last - latest).days >= _MAX_SEARCH_DAYS:
                raise CalendarError(
                    f"calendar {self.name!r} has less than {wanted / NS_PER_MINUTE:g} "
                    f"open minutes in the {_MAX_SEARCH_DAYS} days after a start; check its "
                    "hours and holidays"
                )
            limit = latest + timedelta(days=_MAX_SEARCH_DAYS)
            self._extend_to(min(self._last + timedelta(days=horizon), limit))
            horizon *= 2

    def _open_before(self, at_ns: np.ndarray) -> np.ndarray:
        """Open nanoseconds in the table before each instant (the table covers them)."""
        if self._starts.size == 0:  # no open interval in the days built so far
            return np.zeros(np.shape(at_ns), dtype="int64")
        index = np.searchsorted(self._starts, at_ns, side="right") - 1
        safe = np.maximum(index, 0)
        inside = np.clip(at_ns - self._starts[safe], 0, self._ends[safe] - self._starts[safe])
        return np.where(index >= 0, self._cum_before[safe] + inside, 0)

    def _cover(self, first_ns: int, last_ns: int) -> None:
        # A local date is within a day of the UTC date (offsets are under 24 hours).
        first = from_ns(first_ns).date() - timedelta(days=1)
        last = from_ns(last_ns).date() + timedelta(days=1)
        if self._first is None or first < self._first or last > (self._last or last):
            self._build(
                min(first, self._first or first),
                max(last, self._last or last),
            )

    def _extend_to(self, last: date) -> None:
        assert self._first is not None
        self._build(self._first, last)

    def _build(self, first: date, last: date) -> None:
        starts: list[int] = []
        ends: list[int] = []
        day = first
        while day <= last:
            if day not in self.holidays:
                for opens, closes in self.weekly[day.weekday()]:
                    start, end = self._instant_ns(day, opens), self._instant_ns(day, closes)
                    if end > start:  # an interval inside a spring-forward gap is empty
                        starts.append(start)
                        ends.append(end)
            day += timedelta(days=1)
        self._first, self._last = first, last
        self._starts = np.array(starts, dtype="int64")
        self._ends = np.array(ends, dtype="int64")
        lengths = self._ends - self._starts
        self._cum_end = np.cumsum(lengths)
        self._cum_before = self._cum_end - lengths
        self._lists = (starts, ends, self._cum_before.tolist(), self._cum_end.tolist())

    def _instant_ns(self, day: date, minute: int) -> int:
        wall = datetime.combine(day, time()) + timedelta(minutes=minute)  # 1440 = next midnight
        first = wall.replace(tzinfo=self.zone, fold=0)  # earlier of two occurrences
        instant = first.astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) != wall:
            instant = self._gap_end(wall)
        return to_ns(instant)

    def _gap_end(self, wall: datetime) -> datetime:
        """The instant the clocks jump past ``wall``, a wall time that does not exist."""
        low = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)  # before the jump
        high = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)  # after the jump
        after = high.astimezone(self.zone).utcoffset()
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == after:
                high = middle
            else:
                low = middle
        return high.replace(microsecond=0)


class _AlwaysOpen(BusinessClock):
    """24x7: every instant is open."""

    def __init__(self) -> None:
        self.name = None

    def _open_ns(self, start_ns: int, end_ns: int) -> int:
        return max(end_ns - start_ns, 0)

    def _add_open_ns(self, start_ns: int, wanted: int) -> int:
        return start_ns + max(wanted, 0)

    def open_ns_array(self, start_ns: np.ndarray, end_ns: np.ndarray) -> np.ndarray:
        start_ns = np.asarray(start_ns, dtype="int64")
        return np.maximum(np.asarray(end_ns, dtype="int64") - start_ns, 0)

    def add_open_ns_array(self, start_ns: np.ndarray, minutes: np.ndarray) -> np.ndarray:
        wanted = np.rint(np.asarray(minutes, dtype="float64") * NS_PER_MINUTE).astype("int64")
        return np.asarray(start_ns, dtype="int64") + np.maximum(wanted, 0)


ALWAYS_OPEN: BusinessClock = _AlwaysOpen()


def policy_clocks(calendars: dict[str, Calendar]) -> dict[str | None, BusinessClock]:
    """A clock per calendar name of a policy, plus ``None`` -> ``ALWAYS_OPEN`` (24x7)."""
    clocks: dict[str | None, BusinessClock] = {
        name: BusinessClock.from_calendar(calendar, name) for name, calendar in calendars.items()
    }
    clocks[None] = ALWAYS_OPEN
    return clocks


def lead_clocks(
    clock: BusinessClock,
    *,
    created: datetime,
    sla_minutes: float | None,
    first_response_at: datetime | None,
) -> tuple[datetime | None, float | None]:
    """One lead's SLA due time (None without an SLA) and business-minute TTFR (None while
    unanswered) on ``clock``: what the ledger stores and the write-back sends."""
    due = clock.add_open_minutes(created, sla_minutes) if sla_minutes is not None else None
    business = None
    if first_response_at is not None:
        business = clock.open_minutes(created, first_response_at)
    return due, business
