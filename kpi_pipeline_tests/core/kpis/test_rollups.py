"""KPI rollups against a hand-built ledger whose every expected value is worked out by hand.

The fixture (as_of = 2026-03-03 12:00Z, SLA 60 min unless given):

day 2026-03-02 (UTC)
  L1  09:00 owner 005U1  assigned +2   v1/enterprise  response 09:10 (10 min) SLA 60  -> met
  L2  10:00 owner 005U1  assigned +5   v1/enterprise  response 11:00 (60 min) SLA 60  -> met (exactly at due)
  L3  11:00 owner 005U2  assigned +1   v1/smb         response 11:45 (45 min) SLA 30  -> breached (late)
  L4  12:00 owner 005U2  assigned +30  v2/smb         no response, due 13:00 < as_of -> breached (open)
  L5  23:30 owner 005U1  assigned +0   (created owned, no policy)  response 00:10 next day (40 min),
                                        SLA NaN -> 60 -> met
day 2026-03-03
  L6  08:00 owner 005U1  assigned +3   v2/enterprise  response 08:20 (20 min) SLA 15  -> breached
  L7  11:30 owner 005U2  assigned +4   v2/enterprise  no response (only an automation touched it,
                                        which upstream does not count), due 12:30 > as_of -> pending
  L8  11:00 owner 005U2  assigned +10  v2/smb         no response, due 12:00 == as_of -> pending
  L9  09:00 owner 005U2  assigned +6   v2/smb         response 09:15 (15 min) SLA 240 -> met
  L10 06:00 owner 00GQ1 (a queue, never a user)  v2/queue_fallback  no response, due 07:00 -> breached
  L11 10:00 owner 005U1  assigned 10:02 (minutes not stored)  v2/enterprise
                         response 10:30:20 (minutes not stored: derived 30.33)  SLA 60 -> met

Templates (recommended -> applied): L1 demo->demo, L2 demo->none, L3 intro->demo, L4 intro->none,
L6 demo->demo, L7 demo->none, L8 intro->none, L9 intro->intro, L11 demo->intro; L5, L10 none.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.core.kpis import (
    ROLLUP_NAMES,
    LeadFactsError,
    assignment_latency,
    compute_all,
    day_bounds,
    empty_lead_facts,
    empty_rollup,
    markdown_table,
    reconcile,
    sla,
    template_usage,
    ttfr_by_owner,
    ttfr_overall,
)
from kpi_pipeline_tests.support.kpi_frames import (
    AS_OF,
    D1,
    D2,
    DEMO,
    INTRO,
    NAN,
    Q1,
    U1,
    U2,
    V1,
    V2,
    assert_table,
    facts,
    lead,
)


def twice_the_percentiles(rows: list[tuple]) -> list[tuple]:
    """TTFR rows of leads on 24x7 time: business-minute p50/p90/p95 equal the wall-clock ones."""
    return [(*row, *row[-3:]) for row in rows]


# --- every KPI by hand --------------------------------------------------------------------


def test_ttfr_overall_by_hand(ledger: pd.DataFrame) -> None:
    # Day 1 responded TTFRs sorted: 10, 40, 45, 60 (L4 unanswered).
    #   p50: rank 0.5*3 = 1.5  -> 40 + 0.5*(45-40) = 42.5
    #   p90: rank 0.9*3 = 2.7  -> 45 + 0.7*(60-45) = 55.5
    #   p95: rank 0.95*3 = 2.85 -> 45 + 0.85*(60-45) = 57.75
    # Day 2 responded TTFRs sorted: 15, 20, 30.33 (L11 derived 30 min 20 s = 30.333 -> 30.33).
    #   p50 = 20; p90: rank 1.8 -> 20 + 0.8*10.33 = 28.264; p95: rank 1.9 -> 20 + 0.9*10.33 = 29.297
    # No lead has a calendar (24x7), so the business-minute percentiles repeat them.
    assert_table(
        ttfr_overall(ledger),
        twice_the_percentiles(
            [
                (D1, 5, 4, 4 / 5, 42.5, 55.5, 57.75),
                (D2, 6, 3, 3 / 6, 20.0, 28.264, 29.297),
            ]
        ),
    )


def test_ttfr_by_owner_by_hand(ledger: pd.DataFrame) -> None:
    # D1 005U1: L1 10, L2 60, L5 40 -> sorted 10, 40, 60; p90 rank 1.8 -> 40 + 0.8*20 = 56; p95 -> 58
    # D1 005U2: L3 45, L4 unanswered -> one value
    # D2 005U1: L6 20, L11 30.33 -> p50 25.165, p90 20 + 0.9*10.33 = 29.297, p95 20 + 0.95*10.33 = 29.8135
    # D2 005U2: L7, L8 unanswered, L9 15
    # D2 00GQ1: L10 unanswered -> no percentiles
    assert_table(
        ttfr_by_owner(ledger),
        twice_the_percentiles(
            [
                (D1, U1, 3, 3, 1.0, 40.0, 56.0, 58.0),
                (D1, U2, 2, 1, 0.5, 45.0, 45.0, 45.0),
                (D2, U1, 2, 2, 1.0, 25.165, 29.297, 29.8135),
                (D2, U2, 3, 1, 1 / 3, 15.0, 15.0, 15.0),
                (D2, Q1, 1, 0, 0.0, NAN, NAN, NAN),
            ]
        ),
    )


def test_sla_by_hand(ledger: pd.DataFrame) -> None:
    # D1: met L1, L2 (exactly at due), L5 (default 60); breached L3 (late), L4 (open) -> 2/5 = 40 %
    # D2: met L9, L11; breached L6 (late), L10 (open); pending L7, L8 (due == as_of) -> 2/4 = 50 %
    assert_table(sla(ledger, as_of=AS_OF), [(D1, 3, 2, 0, 40.0), (D2, 2, 2, 2, 50.0)])


def test_sla_later_as_of_turns_pending_into_breached(ledger: pd.DataFrame) -> None:
    # One minute after L8's due (12:00), L8 breaches; L7 (due 12:30) is still pending.
    one_past = datetime(2026, 3, 3, 12, 1, tzinfo=UTC)
    assert_table(sla(ledger, as_of=one_past), [(D1, 3, 2, 0, 40.0), (D2, 2, 3, 1, 60.0)])
    # A day later nothing is pending: D2 breached 4 of 6 settled.
    later = datetime(2026, 3, 4, tzinfo=UTC)
    assert_table(sla(ledger, as_of=later), [(D1, 3, 2, 0, 40.0), (D2, 2, 4, 0, 400 / 6)])


def test_sla_day_with_only_pending_leads_has_no_breach_rate() -> None:
    frame = facts([lead("P1", "2026-03-03T11:30Z", U1, sla_minutes=60.0)])
    assert_table(sla(frame, as_of=AS_OF), [(D2, 0, 0, 1, NAN)])


def test_assignment_latency_by_hand(ledger: pd.DataFrame) -> None:
    # D1 ("", ""): L5 created owned, 0 min. v1/enterprise: 2, 5 -> p50 3.5, p95 2 + 0.95*3 = 4.85
    # D1 v1/smb: L3 1. v2/smb: L4 30.
    # D2 v2/enterprise: L6 3, L7 4, L11 derived 2 -> sorted 2, 3, 4: p50 3, p95 rank 1.9 -> 3.9
    # D2 v2/queue_fallback: L10 never assigned to a user. v2/smb: 6, 10 -> p50 8, p95 9.8
    assert_table(
        assignment_latency(ledger),
        [
            (D1, "", "", 1, 1, 0.0, 0.0),
            (D1, V1, "enterprise", 2, 2, 3.5, 4.85),
            (D1, V1, "smb", 1, 1, 1.0, 1.0),
            (D1, V2, "smb", 1, 1, 30.0, 30.0),
            (D2, V2, "enterprise", 3, 3, 3.0, 3.9),
            (D2, V2, "queue_fallback", 1, 0, NAN, NAN),
            (D2, V2, "smb", 2, 2, 8.0, 9.8),
        ],
    )


def test_template_usage_by_hand(ledger: pd.DataFrame) -> None:
    # D1 demo: L1 taken, L2 not -> 1/2. intro: L3 (used demo instead), L4 -> 0/2
    # D2 demo: L6 taken, L7 not, L11 (used intro instead) -> 1/3. intro: L8 not, L9 taken -> 1/2
    assert_table(
        template_usage(ledger),
        [
            (D1, DEMO, 2, 1, 0.5),
            (D1, INTRO, 2, 0, 0.0),
            (D2, DEMO, 3, 1, 1 / 3),
            (D2, INTRO, 2, 1, 0.5),
        ],
    )


def test_compute_all_matches_the_single_rollups(ledger: pd.DataFrame) -> None:
    every = compute_all(ledger, as_of=AS_OF)
    assert tuple(every) == ROLLUP_NAMES
    pd.testing.assert_frame_equal(every["ttfr_overall"], ttfr_overall(ledger))
    pd.testing.assert_frame_equal(every["ttfr_by_owner"], ttfr_by_owner(ledger))
    pd.testing.assert_frame_equal(every["sla"], sla(ledger, as_of=AS_OF))
    pd.testing.assert_frame_equal(every["assignment_latency"], assignment_latency(ledger))
    pd.testing.assert_frame_equal(every["template_usage"], template_usage(ledger))


def test_inputs_are_not_modified(ledger: pd.DataFrame) -> None:
    before = ledger.copy()
    compute_all(ledger, as_of=AS_OF, tz="Europe/Paris")
    pd.testing.assert_frame_equal(ledger, before)


# --- percentiles -------------------------------------------------------------------------


def test_percentiles_equal_numpy_linear_default() -> None:
    rng = np.random.default_rng(3)
    count = 500
    created = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 3 * 1440, count), unit="min"
    )
    minutes = np.round(rng.lognormal(3, 1.5, count), 2)
    answered = rng.random(count) < 0.7
    owners = rng.choice(np.array([U1, U2, Q1], dtype=object), count)
    frame = facts(
        [
            lead(
                f"R{i}",
                created[i].isoformat(),
                owners[i],
                responded=(created[i] + pd.Timedelta(minutes=minutes[i])).isoformat()
                if answered[i]
                else None,
                ttfr=minutes[i] if answered[i] else NAN,
            )
            for i in range(count)
        ]
    )
    table = ttfr_by_owner(frame)
    days = created.strftime("%Y-%m-%d")
    assert len(table) == 9
    for row in table.itertuples():
        group = answered & (days == row.day) & (owners == row.owner_id)
        want = np.percentile(minutes[group], [50, 90, 95])  # method="linear" is numpy's default
        assert [row.ttfr_p50, row.ttfr_p90, row.ttfr_p95] == pytest.approx(want, rel=1e-12)
        assert row.responded == group.sum()


# --- timezones ---------------------------------------------------------------------------


def test_day_is_the_creation_date_in_the_requested_timezone() -> None:
    frame = facts(
        [
            lead("A", "2026-03-02T23:30Z", U1),  # Paris 00:30 on 03-03; New York 18:30 on 03-02
            lead("B", "2026-03-03T04:30Z", U1),  # Paris 05:30 on 03-03; New York 23:30 on 03-02
            lead("C", "2026-03-03T05:00Z", U1),  # New York 00:00 on 03-03: first instant of the day
        ]
    )
    days = {tz: ttfr_overall(frame, tz=tz)[["day", "leads"]].values.tolist() for tz in
            ("UTC", "Europe/Paris", "America/New_York")}  # fmt: skip
    assert days["UTC"] == [["2026-03-02", 1], ["2026-03-03", 2]]
    assert days["Europe/Paris"] == [["2026-03-03", 3]]
    assert days["America/New_York"] == [["2026-03-02", 2], ["2026-03-03", 1]]


def test_day_boundary_follows_daylight_saving_time() -> None:
    # New York switches to EDT (UTC-4) at 2026-03-08 02:00 local: midnight of 03-09 is 04:00Z,
    # whereas midnight of 03-08 was still 05:00Z.
    frame = facts(
        [
            lead("A", "2026-03-08T04:59Z", U1),  # 23:59 EST on 03-07
            lead("B", "2026-03-08T05:00Z", U1),  # 00:00 EST on 03-08
            lead("C", "2026-03-09T03:59Z", U1),  # 23:59 EDT on 03-08
            lead("D", "2026-03-09T04:00Z", U1),  # 00:00 EDT on 03-09
        ]
    )
    table = ttfr_overall(frame, tz="America/New_York")
    assert table[["day", "leads"]].values.tolist() == [
        ["2026-03-07", 1],
        ["2026-03-08", 2],
        ["2026-03-09", 1],
    ]


# --- empty input, determinism --------------------------------------------------------------


def test_empty_frame_gives_empty_tables_with_their_columns() -> None:
    every = compute_all(empty_lead_facts(), as_of=AS_OF)
    assert all(table.empty for table in every.values())
    assert list(every["sla"].columns) == ["day", "met", "breached", "pending", "breach_pct"]
    assert list(every["template_usage"].columns) == [
        "day", "template_id", "recommended", "applied", "acceptance"
    ]  # fmt: skip
    assert every["ttfr_overall"]["leads"].dtype == "int64"
    assert reconcile(empty_lead_facts(), every) == []


def test_empty_rollup_by_name() -> None:
    assert list(empty_rollup("sla").columns) == ["day", "met", "breached", "pending", "breach_pct"]
    assert empty_rollup("sla")["met"].dtype == "int64"
    with pytest.raises(
        LeadFactsError, match=r"no rollup named 'slas'; the rollups are \['ttfr_overall'"
    ):
        empty_rollup("slas")


def test_no_recommendations_gives_an_empty_template_table(ledger: pd.DataFrame) -> None:
    ledger["Template_Recommended__c"] = None
    assert template_usage(ledger).empty


def csv_texts(rollups: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {name: table.to_csv(index=False) for name, table in rollups.items()}


def test_same_input_gives_identical_csv_whatever_the_row_order(ledger: pd.DataFrame) -> None:
    first = csv_texts(compute_all(ledger, as_of=AS_OF, tz="Europe/Paris"))
    again = csv_texts(compute_all(ledger.copy(), as_of=AS_OF, tz="Europe/Paris"))
    shuffled = ledger.sample(frac=1.0, random_state=11).reset_index(drop=True)
    reordered = csv_texts(compute_all(shuffled, as_of=AS_OF, tz="Europe/Paris"))
    assert first == again == reordered
    assert first["sla"].splitlines()[0] == "day,met,breached,pending,breach_pct"


# --- reconcile -----------------------------------------------------------------------------


def test_reconcile_accepts_rollups_of_the_same_ledger(ledger: pd.DataFrame) -> None:
    assert reconcile(ledger, compute_all(ledger, as_of=AS_OF)) == []
    paris = compute_all(ledger, as_of=AS_OF, tz="Europe/Paris")
    assert reconcile(ledger, paris, tz="Europe/Paris") == []


def test_reconcile_names_each_count_that_does_not_match(ledger: pd.DataFrame) -> None:
    rollups = compute_all(ledger, as_of=AS_OF)
    rollups["ttfr_by_owner"] = rollups["ttfr_by_owner"].iloc[:-1]  # drop D2's queue row (1 lead)
    rollups["sla"].loc[0, "pending"] = 5
    problems = reconcile(ledger, rollups)
    assert problems == [
        "ttfr_by_owner day 2026-03-03: leads = 5, but the ledger has 6",
        "sla day 2026-03-02: met + breached + pending = 10, but the ledger has 5",
    ]


def test_reconcile_flags_rollups_of_another_ledger(ledger: pd.DataFrame) -> None:
    stale = compute_all(ledger[ledger["Id"] != "L9"], as_of=AS_OF)
    problems = reconcile(ledger, stale)
    assert "ttfr_overall day 2026-03-03: leads = 5, but the ledger has 6" in problems
    assert "template_usage day 2026-03-03: recommended = 4, but the ledger has 5" in problems


def test_reconcile_reports_missing_rollups_and_columns(ledger: pd.DataFrame) -> None:
    rollups = compute_all(ledger, as_of=AS_OF)
    assert reconcile(ledger, {"sla": rollups["sla"]}) == [
        "rollups ['ttfr_overall', 'ttfr_by_owner', 'sla_by_owner', 'sla_by_rule', "
        "'assignment_latency', 'template_usage'] are missing (expected ['ttfr_overall', "
        "'ttfr_by_owner', 'sla', 'sla_by_owner', 'sla_by_rule', 'assignment_latency', "
        "'template_usage'])"
    ]
    rollups["sla"] = rollups["sla"].drop(columns=["pending"])
    assert reconcile(ledger, rollups) == [
        "sla has columns ['day', 'met', 'breached', 'breach_pct'], expected "
        "['day', 'met', 'breached', 'pending', 'breach_pct']"
    ]


# --- bad input -----------------------------------------------------------------------------


def test_missing_columns_are_named(ledger: pd.DataFrame) -> None:
    with pytest.raises(LeadFactsError, match=r"lacks columns \['SLA_Minutes'\]"):
        ttfr_overall(ledger.drop(columns=["SLA_Minutes"]))


def test_naive_or_text_datetimes_are_rejected_with_the_fix(ledger: pd.DataFrame) -> None:
    ledger["CreatedDate"] = ledger["CreatedDate"].dt.tz_localize(None)
    with pytest.raises(LeadFactsError, match=r"CreatedDate .* tz-aware .*utc=True"):
        ttfr_overall(ledger)
    ledger["CreatedDate"] = "2026-03-02T09:00:00Z"
    with pytest.raises(LeadFactsError, match="CreatedDate"):
        ttfr_overall(ledger)


def test_text_numbers_are_rejected(ledger: pd.DataFrame) -> None:
    ledger["SLA_Minutes"] = "60"
    with pytest.raises(LeadFactsError, match=r"SLA_Minutes .* numeric .*pd.to_numeric"):
        sla(ledger, as_of=AS_OF)


def test_bad_rows_are_named_by_lead_id(ledger: pd.DataFrame) -> None:
    broken = ledger.copy()
    broken.loc[broken["Id"] == "L3", "CreatedDate"] = pd.NaT
    with pytest.raises(LeadFactsError, match=r"1 lead\(s\) where CreatedDate is empty.*'L3'"):
        ttfr_overall(broken)
    with pytest.raises(LeadFactsError, match=r"duplicate lead Id.*'L1'"):
        ttfr_overall(pd.concat([ledger, ledger.head(1)], ignore_index=True))
    negative = ledger.copy()
    negative.loc[negative["Id"] == "L2", "SLA_Minutes"] = -5.0
    with pytest.raises(LeadFactsError, match=r"SLA_Minutes is negative.*'L2'"):
        sla(negative, as_of=AS_OF)


def test_unknown_timezone_and_naive_as_of_are_rejected(ledger: pd.DataFrame) -> None:
    with pytest.raises(LeadFactsError, match=r"'Mars/Olympus' is not an IANA zone.*KPI_TIMEZONE"):
        ttfr_overall(ledger, tz="Mars/Olympus")
    with pytest.raises(LeadFactsError, match=r"as_of .* has no timezone"):
        sla(ledger, as_of=datetime(2026, 3, 3, 12))


def test_a_non_frame_is_rejected() -> None:
    with pytest.raises(LeadFactsError, match="must be a pandas DataFrame, got list"):
        ttfr_overall([])  # type: ignore[arg-type]


# --- markdown ------------------------------------------------------------------------------


def test_markdown_table_shows_the_first_rows_and_says_how_many_are_left(
    ledger: pd.DataFrame,
) -> None:
    text = markdown_table(ttfr_by_owner(ledger), max_rows=2)
    lines = text.splitlines()
    assert lines[0] == (
        "| day | owner_id | leads | responded | coverage | ttfr_p50 | ttfr_p90 | ttfr_p95 "
        "| ttfr_business_p50 | ttfr_business_p90 | ttfr_business_p95 |"
    )
    assert lines[1] == "| " + " | ".join(["---"] * 11) + " |"
    assert lines[2] == "| 2026-03-02 | 005U1 | 3 | 3 | 1 | 40 | 56 | 58 | 40 | 56 | 58 |"
    assert lines[3] == "| 2026-03-02 | 005U2 | 2 | 1 | 0.5 | 45 | 45 | 45 | 45 | 45 | 45 |"
    assert lines[-1] == "… 3 more rows (5 in all)"
    full = markdown_table(ttfr_by_owner(ledger), max_rows=10).splitlines()
    assert full[-1] == "| 2026-03-03 | 00GQ1 | 1 | 0 | 0 |  |  |  |  |  |  |"


# --- day bounds ----------------------------------------------------------------------------


def test_day_bounds_are_the_utc_instants_of_local_midnights() -> None:
    utc = UTC
    assert day_bounds("2026-03-02") == (
        datetime(2026, 3, 2, tzinfo=utc),
        datetime(2026, 3, 3, tzinfo=utc),
    )
    # 23-hour day: New York springs forward on 2026-03-08 (EST -5 -> EDT -4).
    assert day_bounds("2026-03-08", tz="America/New_York") == (
        datetime(2026, 3, 8, 5, tzinfo=utc),
        datetime(2026, 3, 9, 4, tzinfo=utc),
    )
    # 25-hour day: New York falls back on 2026-11-01.
    assert day_bounds("2026-11-01", tz="America/New_York") == (
        datetime(2026, 11, 1, 4, tzinfo=utc),
        datetime(2026, 11, 2, 5, tzinfo=utc),
    )
    # Santiago springs forward at midnight on 2026-09-06: local 00:00 never happens, the day
    # starts at 01:00 -03 = 04:00Z.
    assert day_bounds("2026-09-06", tz="America/Santiago")[0] == datetime(2026, 9, 6, 4, tzinfo=utc)


def test_day_bounds_select_exactly_the_leads_of_that_local_day() -> None:
    frame = facts(
        [
            lead("A", "2026-03-08T04:59Z", U1),
            lead("B", "2026-03-08T05:00Z", U1),
            lead("C", "2026-03-09T03:59Z", U1),
            lead("D", "2026-03-09T04:00Z", U1),
        ]
    )
    start, end = day_bounds("2026-03-08", tz="America/New_York")
    inside = frame[(frame["CreatedDate"] >= start) & (frame["CreatedDate"] < end)]
    assert inside["Id"].tolist() == ["B", "C"]
    assert ttfr_overall(inside, tz="America/New_York")["day"].tolist() == ["2026-03-08"]


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "2026-03-08T05:00"])
def test_day_bounds_reject_what_is_not_a_date(bad: str) -> None:
    with pytest.raises(LeadFactsError, match=f"day '{bad}' is not a .*YYYY-MM-DD"):
        day_bounds(bad)
