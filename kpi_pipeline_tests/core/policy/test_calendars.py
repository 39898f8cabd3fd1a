"""Business-hours calendars in the routing policy: what `policy validate` refuses (with the
JSON path and the fix), and which calendar a rule's leads are measured in."""

from __future__ import annotations

from kpi_pipeline.core.policy.load import (
    load_policy,
    policy_fingerprint,
)
from kpi_pipeline_tests.support.policies import (
    assert_faults_mention,
    packaged_policy_document,
    policy_faults,
    validate_policy_cli,
)


def test_the_packaged_policy_has_a_calendar_per_region():
    policy = load_policy()
    assert set(policy.calendars) == {"na", "emea", "apac"}
    assert {c.timezone for c in policy.calendars.values()} == {
        "America/New_York",
        "Europe/Berlin",
        "Australia/Sydney",
    }
    assert policy.default_calendar == "na"
    assert policy.calendar_name("emea") == "emea"
    assert policy.calendar_name("apac") == "apac"
    assert policy.calendar_name("na-high-intent") == "na"  # no calendar of its own: default
    assert policy.calendar_name("no-such-rule") == "na"  # the fallback rule
    # Both holiday forms are in use and read as dates.
    assert len(policy.calendars["na"].holiday_dates()) == 20
    assert str(min(policy.calendars["emea"].holiday_dates())) == "2026-01-01"


def test_a_policy_without_calendars_is_24x7_and_keeps_its_fingerprint():
    raw = packaged_policy_document()
    for key in ("calendars", "default_calendar"):
        del raw[key]
    for rule in raw["rules"]:
        rule.pop("calendar", None)
    policy = load_policy(raw)
    assert policy.calendar_name("emea") is None
    assert "calendars" not in policy.to_raw()
    with_empty = load_policy({**raw, "calendars": {}})
    assert policy_fingerprint(with_empty) == policy_fingerprint(policy)


def test_every_calendar_fault_is_reported_with_its_path_and_fix():
    raw = packaged_policy_document()
    na = raw["calendars"]["na"]
    na["timezone"] = "America/New_Yrok"
    na["hours"]["mon"] = [["09:00", "13:00"], ["12:00", "17:00"]]  # overlap
    na["hours"]["tue"] = [["18:00", "09:00"]]  # crosses midnight
    na["hours"]["wed"] = [["08:00", "18:00"], ["09:00", "10:00"], ["12:00", "13:00"]]
    na["holidays"]["2026"][0] = "02-30"
    raw["calendars"]["emea"]["holidays"][1] = "2026-13-01"
    raw["calendars"]["apac"]["hours"] = {"sat": []}  # never open
    raw["rules"][2]["calendar"] = "europe"
    raw["default_calendar"] = "north-america"
    assert_faults_mention(
        raw,
        [
            ("$.calendars.na.timezone", "unknown IANA timezone 'America/New_Yrok'"),
            ("$.calendars.na.timezone", "America/New_York"),  # names a valid example
            (
                "$.calendars.na.hours.mon[1]",
                "12:00-17:00 overlaps 09:00-13:00 ($.calendars.na.hours.mon[0])",
            ),
            ("$.calendars.na.hours.mon[1]", "merge them"),
            ("$.calendars.na.hours.tue[0]", "split one that crosses midnight"),
            # Both short intervals inside the long one are caught, each against the long one.
            ("$.calendars.na.hours.wed[1]", "overlaps 08:00-18:00"),
            ("$.calendars.na.hours.wed[2]", "overlaps 08:00-18:00"),
            ("$.calendars.na.holidays.2026[0]", "not a day of 2026"),
            ("$.calendars.emea.holidays[1]", "YYYY-MM-DD"),
            ("$.calendars.apac.hours", "no open interval on any weekday"),
            (
                "$.rules[2].calendar",
                "calendar 'europe' is not defined in $.calendars (apac, emea, na)",
            ),
            ("$.default_calendar", "calendar 'north-america' is not defined"),
        ],
    )


def test_intervals_that_only_touch_are_fine_and_24_00_closes_the_day():
    raw = packaged_policy_document()
    raw["calendars"]["na"]["hours"]["sat"] = [["00:00", "12:00"], ["12:00", "24:00"]]
    assert load_policy(raw).calendars["na"].weekly_minutes()[5] == ((0, 720), (720, 1440))


def test_schema_refuses_a_malformed_wall_time():
    raw = packaged_policy_document()
    raw["calendars"]["na"]["hours"]["mon"] = [["9:00", "17:00"]]
    assert "$.calendars.na.hours.mon[0][0]" in {fault.path for fault in policy_faults(raw)}


def test_validate_cli_prints_the_calendar_faults(tmp_path, capsys):
    raw = packaged_policy_document()
    raw["calendars"]["emea"]["timezone"] = "Europe/Berlim"
    raw["rules"][3]["calendar"] = "asia"
    assert validate_policy_cli(raw, tmp_path) == 1
    out = capsys.readouterr().out
    assert "2 fault(s)" in out
    assert "$.calendars.emea.timezone: unknown IANA timezone 'Europe/Berlim'" in out
    assert "$.rules[3].calendar: calendar 'asia' is not defined" in out


# --- country holiday sets (the holidays library) -----------------------------------------
def _ny_calendar(holidays: object) -> dict:
    week = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
    return {"timezone": "America/New_York", "hours": week, "holidays": holidays}


def _due(holidays: object, created: str, minutes: float = 60) -> str:
    from datetime import datetime

    from kpi_pipeline.core.policy.calendars import Calendar
    from kpi_pipeline.core.workloads.business_hours import BusinessClock

    clock = BusinessClock.from_calendar(Calendar.model_validate(_ny_calendar(holidays)))
    start = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return clock.add_open_minutes(start, minutes).strftime("%Y-%m-%dT%H:%MZ")


def test_a_country_set_closes_its_holidays_in_any_year_beside_explicit_dates():
    # Wed 2028-11-22 16:30 EST (21:30Z), 60 minutes: 30 on Wednesday; Thanksgiving
    # (Thu 11-23, in no explicit list) closed; 30 on Friday -> 09:30 EST = 14:30Z.
    assert _due({"country": "US"}, "2028-11-22T21:30:00Z") == "2028-11-24T14:30Z"
    # An explicit extra date (the day after Thanksgiving) closes Friday too: Monday 09:30.
    extra = {"country": "US", "dates": ["2028-11-24"]}
    assert _due(extra, "2028-11-22T21:30:00Z") == "2028-11-27T14:30Z"
    # Observed days: 2026-07-04 is a Saturday, so Friday 07-03 is closed. Thu 07-02 16:30
    # EDT (20:30Z): 30 on Thursday, 30 on Monday 07-06 -> 09:30 EDT = 13:30Z.
    assert _due({"country": "US"}, "2026-07-02T20:30:00Z") == "2026-07-06T13:30Z"
    # The same lead without holidays: Friday 09:30 EDT.
    assert _due([], "2026-07-02T20:30:00Z") == "2026-07-03T13:30Z"


def test_a_subdivision_set_adds_its_own_holidays():
    # Berlin (DE-BE) has International Women's Day, Sun 2026-03-08, and in 2027 Mon 03-08;
    # Bavaria does not. 2027-03-05 Fri 16:30 EST (21:30Z) on the NY hours for simplicity.
    assert _due({"country": "DE", "subdivision": "BE"}, "2027-03-05T21:30:00Z") == (
        "2027-03-09T14:30Z"
    )
    assert _due({"country": "DE", "subdivision": "BY"}, "2027-03-05T21:30:00Z") == (
        "2027-03-08T14:30Z"
    )


def test_unknown_countries_and_subdivisions_are_refused_with_their_json_path():
    raw = packaged_policy_document()
    raw["calendars"]["na"]["holidays"] = {"country": "XX", "dates": ["2026-02-30"]}
    raw["calendars"]["emea"]["holidays"] = {"country": "DE", "subdivision": "ZZ"}
    raw["calendars"]["apac"]["holidays"] = {"country": "AU", "subdivison": "NSW"}
    assert_faults_mention(
        raw,
        [
            ("$.calendars.na.holidays.country", "'XX' is not a country"),
            ("$.calendars.na.holidays.dates[0]", "write it YYYY-MM-DD"),
            ("$.calendars.emea.holidays.subdivision", "'ZZ' is not a subdivision of DE"),
            ("$.calendars.emea.holidays.subdivision", "BE"),
            ("$.calendars.apac.holidays.subdivison", "unknown key"),
        ],
    )


def test_policy_validate_accepts_a_country_set(tmp_path, capsys):
    raw = packaged_policy_document()
    raw["calendars"]["na"]["holidays"] = {"country": "US", "dates": ["2026-11-27"]}
    assert validate_policy_cli(raw, tmp_path) == 0
    assert "valid (version" in capsys.readouterr().out
