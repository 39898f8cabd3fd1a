"""SLA by owner and by (policy version, rule): the daily SLA's states and as-of instant,
grouped further. Every expected value is worked out by hand.

Part 1 uses the hand-built ledger of ``support/kpi_frames.py``, imported as ``kf``
(test_rollups.py lists the leads); part 2 runs a small recorded stream through the processor
into real SQLite and PostgreSQL ledgers and rolls up what the ledger holds, at two as-of
instants.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.kpis import (
    compute_all,
    empty_lead_facts,
    reconcile,
    sla,
    sla_by_owner,
    sla_by_rule,
    sla_over_days,
)
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline_tests.support import kpi_frames as kf
from kpi_pipeline_tests.support.events import REP_A, REP_B
from kpi_pipeline_tests.support.kpi_stream import POLICY, recorded_stream
from kpi_pipeline_tests.support.processors import make_processor

# --- part 1: the hand-built ledger -----------------------------------------------------------


def test_sla_by_owner_by_hand(ledger: pd.DataFrame) -> None:
    # D1 005U1: L1 met, L2 met (exactly at due), L5 met (default 60)  -> 0 %
    # D1 005U2: L3 breached (late), L4 breached (open)                -> 100 %
    # D2 005U1: L6 breached (late), L11 met                           -> 50 %
    # D2 005U2: L9 met; L7 pending (due 12:30), L8 pending (due == as_of) -> 0 of 1 settled
    # D2 00GQ1: L10 breached (open)                                   -> 100 %
    kf.assert_table(
        sla_by_owner(ledger, as_of=kf.AS_OF),
        [
            (kf.D1, kf.U1, 3, 0, 0, 0.0),
            (kf.D1, kf.U2, 0, 2, 0, 100.0),
            (kf.D2, kf.U1, 1, 1, 0, 50.0),
            (kf.D2, kf.U2, 1, 0, 2, 0.0),
            (kf.D2, kf.Q1, 0, 1, 0, 100.0),
        ],
    )


def test_sla_by_rule_by_hand(ledger: pd.DataFrame) -> None:
    # D1 (no policy, created owned): L5 met; v1/enterprise: L1, L2 met; v1/smb: L3 late;
    #    v2/smb: L4 open breach.
    # D2 v2/enterprise: L6 late, L7 pending, L11 met; v2/queue_fallback: L10 open breach;
    #    v2/smb: L8 pending, L9 met.
    kf.assert_table(
        sla_by_rule(ledger, as_of=kf.AS_OF),
        [
            (kf.D1, "", "", 1, 0, 0, 0.0),
            (kf.D1, kf.V1, "enterprise", 2, 0, 0, 0.0),
            (kf.D1, kf.V1, "smb", 0, 1, 0, 100.0),
            (kf.D1, kf.V2, "smb", 0, 1, 0, 100.0),
            (kf.D2, kf.V2, "enterprise", 1, 1, 1, 50.0),
            (kf.D2, kf.V2, "queue_fallback", 0, 1, 0, 100.0),
            (kf.D2, kf.V2, "smb", 1, 0, 1, 0.0),
        ],
    )


def test_a_later_as_of_turns_pending_leads_into_breaches_in_their_own_group(
    ledger: pd.DataFrame,
) -> None:
    # 12:01: L8 (005U2, v2/smb, due 12:00) breaches; L7 (005U2, v2/enterprise, due 12:30) waits.
    one_past = datetime(2026, 3, 3, 12, 1, tzinfo=UTC)
    by_owner = sla_by_owner(ledger, as_of=one_past).set_index(["day", "owner_id"])
    assert tuple(by_owner.loc[(kf.D2, kf.U2)]) == (1, 1, 1, 50.0)
    by_rule = sla_by_rule(ledger, as_of=one_past).set_index(["day", "policy_version", "rule"])
    assert tuple(by_rule.loc[(kf.D2, kf.V2, "smb")]) == (1, 1, 0, 50.0)
    assert tuple(by_rule.loc[(kf.D2, kf.V2, "enterprise")]) == (1, 1, 1, 50.0)
    # A day later L7 breaches too: 005U2 has 1 met and 2 breached -> 200/3 %.
    later = sla_by_owner(ledger, as_of=datetime(2026, 3, 4, tzinfo=UTC))
    row = later.set_index(["day", "owner_id"]).loc[(kf.D2, kf.U2)]
    assert tuple(row[["met", "breached", "pending"]]) == (1, 2, 0)
    assert row["breach_pct"] == pytest.approx(200 / 3)


def test_a_group_with_only_pending_leads_has_no_breach_rate() -> None:
    frame = kf.facts(
        [
            kf.lead("P1", "2026-03-03T11:30Z", kf.U1, version=kf.V2, rule="smb", sla_minutes=60.0),
            kf.lead("P2", "2026-03-03T09:00Z", kf.U2, version=kf.V2, rule="smb", sla_minutes=60.0),
        ]
    )
    # P1 due 12:30 > as_of: pending. P2 due 10:00 unanswered: breached.
    kf.assert_table(
        sla_by_owner(frame, as_of=kf.AS_OF),
        [(kf.D2, kf.U1, 0, 0, 1, kf.NAN), (kf.D2, kf.U2, 0, 1, 0, 100.0)],
    )
    kf.assert_table(sla_by_rule(frame, as_of=kf.AS_OF), [(kf.D2, kf.V2, "smb", 0, 1, 1, 100.0)])


def test_breakdowns_add_up_to_the_daily_sla(ledger: pd.DataFrame) -> None:
    daily = sla(ledger, as_of=kf.AS_OF).set_index("day")[["met", "breached", "pending"]]
    for table in (sla_by_owner(ledger, as_of=kf.AS_OF), sla_by_rule(ledger, as_of=kf.AS_OF)):
        summed = table.groupby("day")[["met", "breached", "pending"]].sum()
        pd.testing.assert_frame_equal(summed, daily, check_index_type=False)


def test_compute_all_includes_the_breakdowns_and_reconcile_checks_them(
    ledger: pd.DataFrame,
) -> None:
    every = compute_all(ledger, as_of=kf.AS_OF, tz="Europe/Paris")
    pd.testing.assert_frame_equal(
        every["sla_by_owner"], sla_by_owner(ledger, as_of=kf.AS_OF, tz="Europe/Paris")
    )
    pd.testing.assert_frame_equal(
        every["sla_by_rule"], sla_by_rule(ledger, as_of=kf.AS_OF, tz="Europe/Paris")
    )
    assert reconcile(ledger, every, tz="Europe/Paris") == []
    every = compute_all(ledger, as_of=kf.AS_OF)
    every["sla_by_rule"] = every["sla_by_rule"].iloc[1:]  # drop D1's unrouted row (L5)
    assert reconcile(ledger, every) == [
        "sla_by_rule day 2026-03-02: met + breached + pending = 4, but the ledger has 5"
    ]


def test_breakdowns_of_an_empty_frame_are_empty_with_their_columns() -> None:
    empty = empty_lead_facts()
    assert list(sla_by_owner(empty, as_of=kf.AS_OF).columns) == [
        "day", "owner_id", "met", "breached", "pending", "breach_pct"
    ]  # fmt: skip
    assert list(sla_by_rule(empty, as_of=kf.AS_OF).columns) == [
        "day", "policy_version", "rule", "met", "breached", "pending", "breach_pct"
    ]  # fmt: skip


# --- part 2: a recorded stream through the processor into a real ledger ------------------------
#
# The stream of support/kpi_stream.py, as cli/test_kpis_from_stream.py replays it (policy kpi-test-1, pool "reps" = round robin REP_A,
# REP_B, in creation order, then Id for equal creation times):
#   L1 10:00 -> REP_A everyone  answered 10:30          SLA 60  -> met
#   L2 10:00 -> REP_B everyone  answered 12:00          SLA 60  -> breached (late)
#   L3 10:00 -> REP_A everyone  only an automation task SLA 60  -> breached (open, due 11:00)
#   L5 10:00 -> REP_B partners  answered 12:40          SLA 240 -> met
#   L4 12:30 -> REP_A everyone  nothing                 SLA 60  -> pending until 13:30
DAY = "2026-11-02"
VERSION = "kpi-test-1"


def _rolled_up(ledger_url: str, as_of: datetime) -> dict[str, pd.DataFrame]:
    ledger = Ledger.from_url(ledger_url)
    try:
        processor = make_processor(ledger, load_policy(POLICY))
        processor.process([ChangeEvent.from_recorded(m) for m in recorded_stream()])
        frame = ledger.lead_facts_frame()
    finally:
        ledger.dispose()
    return compute_all(frame, as_of=as_of)


def test_sla_breakdowns_from_a_stream_with_a_pending_lead(ledger_url: str) -> None:
    every = _rolled_up(ledger_url, datetime(2026, 11, 2, 13, 0, tzinfo=UTC))
    kf.assert_table(
        every["sla_by_owner"],
        [(DAY, REP_A, 1, 1, 1, 50.0), (DAY, REP_B, 1, 1, 0, 50.0)],
    )
    kf.assert_table(
        every["sla_by_rule"],
        [(DAY, VERSION, "everyone", 1, 2, 1, 200 / 3), (DAY, VERSION, "partners", 1, 0, 0, 0.0)],
    )


def test_sla_breakdowns_from_a_stream_after_the_pending_lead_is_due(ledger_url: str) -> None:
    every = _rolled_up(ledger_url, datetime(2026, 11, 2, 14, 0, tzinfo=UTC))  # L4 due 13:30
    kf.assert_table(
        every["sla_by_owner"],
        [(DAY, REP_A, 1, 2, 0, 200 / 3), (DAY, REP_B, 1, 1, 0, 50.0)],
    )
    kf.assert_table(
        every["sla_by_rule"],
        [(DAY, VERSION, "everyone", 1, 3, 0, 75.0), (DAY, VERSION, "partners", 1, 0, 0, 0.0)],
    )


def test_sla_over_days_sums_each_group_and_puts_the_most_breached_first(
    ledger: pd.DataFrame,
) -> None:
    # 005U2: D1 (0, 2, 0) + D2 (1, 0, 2) = 1 met, 2 breached, 2 pending -> 2/3
    # 005U1: D1 (3, 0, 0) + D2 (1, 1, 0) = 4 met, 1 breached            -> 20 %
    # 00GQ1: D2 (0, 1, 0)                                              -> 100 %
    # 005U1 and 00GQ1 both have 1 breach: ordered by key ("005U1" < "00GQ1").
    summed = sla_over_days(sla_by_owner(ledger, as_of=kf.AS_OF), ["owner_id"])
    kf.assert_table(
        summed,
        [(kf.U2, 1, 2, 2, 200 / 3), (kf.U1, 4, 1, 0, 20.0), (kf.Q1, 0, 1, 0, 100.0)],
    )
