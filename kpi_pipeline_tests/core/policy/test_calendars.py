"""Business-hours calendars in the routing policy: what `policy validate` refuses (with the
JSON path and the fix), and which calendar a rule's leads are measured in."""

from __future__ import annotations

import json

import pytest

from kpi_pipeline.cli.main import main
from kpi_pipeline.core.policy.load import default_policy_path, load_policy, policy_fingerprint
from kpi_pipeline.core.policy.validation import PolicyError, PolicyFault


def default_raw() -> dict:
    return json.loads(default_policy_path().read_text(encoding="utf-8"))


def faults_of(raw: dict) -> dict[str, str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(raw)
    faults: list[PolicyFault] = caught.value.faults
    return {fault.path: fault.message for fault in faults}


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
    raw = default_raw()
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
    raw = default_raw()
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
    faults = faults_of(raw)
    assert "unknown IANA timezone 'America/New_Yrok'" in faults["$.calendars.na.timezone"]
    assert "America/New_York" in faults["$.calendars.na.timezone"]  # names a valid example
    overlap = faults["$.calendars.na.hours.mon[1]"]
    assert "12:00-17:00 overlaps 09:00-13:00 ($.calendars.na.hours.mon[0])" in overlap
    assert "merge them" in overlap
    assert "split one that crosses midnight" in faults["$.calendars.na.hours.tue[0]"]
    # Both short intervals inside the long one are caught, each against the long one.
    assert "overlaps 08:00-18:00" in faults["$.calendars.na.hours.wed[1]"]
    assert "overlaps 08:00-18:00" in faults["$.calendars.na.hours.wed[2]"]
    assert "not a day of 2026" in faults["$.calendars.na.holidays.2026[0]"]
    assert "YYYY-MM-DD" in faults["$.calendars.emea.holidays[1]"]
    assert "no open interval on any weekday" in faults["$.calendars.apac.hours"]
    assert (
        "calendar 'europe' is not defined in $.calendars (apac, emea, na)"
        in faults["$.rules[2].calendar"]
    )
    assert "calendar 'north-america' is not defined" in faults["$.default_calendar"]


def test_intervals_that_only_touch_are_fine_and_24_00_closes_the_day():
    raw = default_raw()
    raw["calendars"]["na"]["hours"]["sat"] = [["00:00", "12:00"], ["12:00", "24:00"]]
    assert load_policy(raw).calendars["na"].weekly_minutes()[5] == ((0, 720), (720, 1440))


def test_schema_refuses_a_malformed_wall_time():
    raw = default_raw()
    raw["calendars"]["na"]["hours"]["mon"] = [["9:00", "17:00"]]
    assert "$.calendars.na.hours.mon[0][0]" in faults_of(raw)


def test_validate_cli_prints_the_calendar_faults(tmp_path, capsys):
    raw = default_raw()
    raw["calendars"]["emea"]["timezone"] = "Europe/Berlim"
    raw["rules"][3]["calendar"] = "asia"
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    assert main(["policy", "validate", str(path)]) == 1
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
    raw = default_raw()
    raw["calendars"]["na"]["holidays"] = {"country": "XX", "dates": ["2026-02-30"]}
    raw["calendars"]["emea"]["holidays"] = {"country": "DE", "subdivision": "ZZ"}
    raw["calendars"]["apac"]["holidays"] = {"country": "AU", "subdivison": "NSW"}
    faults = faults_of(raw)
    assert "'XX' is not a country" in faults["$.calendars.na.holidays.country"]
    assert "write it YYYY-MM-DD" in faults["$.calendars.na.holidays.dates[0]"]
    assert "'ZZ' is not a subdivision of DE" in faults["$.calendars.emea.holidays.subdivision"]
    assert "BE" in faults["$.calendars.emea.holidays.subdivision"]
    assert "unknown key" in faults["$.calendars.apac.holidays.subdivison"]


def test_policy_validate_accepts_a_country_set(tmp_path, capsys):
    raw = default_raw()
    raw["calendars"]["na"]["holidays"] = {"country": "US", "dates": ["2026-11-27"]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw))
    assert main(["policy", "validate", str(path)]) == 0
    assert "valid (version" in capsys.readouterr().out
