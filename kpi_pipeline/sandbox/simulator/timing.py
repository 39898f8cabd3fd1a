"""When things happen in the simulated org: the lead-arrival rhythm (a business-hours peak,
quiet nights and weekends), lognormal delays, and the regions' working hours from the
calendars of the packaged routing policy."""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from datetime import UTC, datetime, timedelta

from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.core.workloads.business_hours import BusinessClock

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


# Each region's reps work the hours of its calendar in the packaged routing policy.
REGION_CALENDARS = {"NA": "na", "EMEA": "emea", "APAC": "apac"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lognormal_ms(rng: random.Random, median_minutes: float, sigma: float) -> int:
    return int(rng.lognormvariate(math.log(median_minutes), sigma) * MINUTE_MS)


def _bump(hour: float, center: float, width: float) -> float:
    distance = min(abs(hour - center), 24 - abs(hour - center))
    return math.exp(-0.5 * (distance / width) ** 2)


def arrival_weight(at_ms: int) -> float:
    """Relative lead-arrival intensity at a UTC instant (1.0 ~ weekday afternoon peak)."""
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    hour = moment.hour + moment.minute / 60
    weight = (
        0.06
        + 0.5 * _bump(hour, 9.5, 2.0)
        + 0.9 * _bump(hour, 15.5, 2.5)
        + 0.15 * _bump(hour, 2.0, 2.0)
    )
    return weight * (0.25 if moment.weekday() >= 5 else 1.0)


def sample_arrivals(rng: random.Random, count: int, start_ms: int, end_ms: int) -> list[int]:
    """``count`` arrival instants in [start, end): given its total, a Poisson process's
    arrivals are independent draws from its normalized intensity (sampled per minute)."""
    if end_ms <= start_ms:
        raise ValueError(f"simulation window is empty: start {start_ms} >= end {end_ms}")
    edges = list(range(start_ms, end_ms, MINUTE_MS))
    cumulative = list(itertools.accumulate(arrival_weight(t + MINUTE_MS // 2) for t in edges))
    total = cumulative[-1]
    arrivals = []
    for _ in range(count):
        index = bisect.bisect_left(cumulative, rng.random() * total)
        bin_end = min(edges[index] + MINUTE_MS, end_ms)
        arrivals.append(edges[index] + int(rng.random() * (bin_end - edges[index])))
    return sorted(arrivals)


@functools.cache
def _region_clocks() -> dict[str, BusinessClock]:
    calendars = load_policy().calendars
    return {
        region: BusinessClock.from_calendar(calendars[name], name)
        for region, name in REGION_CALENDARS.items()
    }


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def next_working_time(at_ms: int, region: str) -> int:
    """``at_ms`` if it is inside the region's working hours, else the next start of them."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return _ms(_region_clocks()[region].next_open(at))


def after_working_minutes(at_ms: int, minutes: float, region: str) -> int:
    """The instant ``minutes`` of the region's working time after ``at_ms``."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return _ms(_region_clocks()[region].add_open_minutes(at, minutes))


def day_ms(at_ms: int) -> int:
    """Midnight UTC of the instant's day (Salesforce Date fields travel as epoch ms)."""
    return at_ms - at_ms % DAY_MS
