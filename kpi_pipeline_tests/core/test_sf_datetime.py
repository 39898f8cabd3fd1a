"""``format_sf_datetime``: ISO-8601 UTC with milliseconds and ``Z``, as strftime writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime

ZONES = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=500, deadline=None)
@given(at=st.datetimes(min_value=datetime(2, 1, 1), timezones=st.just(UTC)), zone=ZONES)
def test_the_text_is_strftimes_in_utc_whatever_the_zone(at: datetime, zone: timezone) -> None:
    local = at.astimezone(zone) if at.year > 2 else at
    expected = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    assert format_sf_datetime(local) == expected


def test_examples_and_the_round_trip() -> None:
    at = datetime(2026, 12, 7, 9, 5, 3, 123999, tzinfo=timezone(timedelta(hours=2)))
    assert format_sf_datetime(at) == "2026-12-07T07:05:03.123Z"
    assert format_sf_datetime(datetime(999, 1, 2, tzinfo=UTC)) == "999-01-02T00:00:00.000Z"
    assert format_sf_datetime(None) == ""
    assert parse_sf_datetime(format_sf_datetime(at)) == at.replace(microsecond=123000)
