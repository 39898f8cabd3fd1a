"""Assignment through a later owner change: a lead created owned by a queue (or by the
integration user) that routing sends to a queue is assigned when a change first gives it
a user owner, at that change's commit time, with latency measured from creation.

The partner rule of the test policy routes ``LeadSource: Partner`` to a queue, so routing
itself never assigns these leads. Real SQLite and PostgreSQL ledgers (``ledger_url``).

Hand-computed times (T0 = 2026-11-18T11:06:40Z):
  created T0 in QUEUE; routed to the partner queue at T0 (no assignment);
  REP_A takes it at T0 + 20 min (11:26:40Z)  -> assigned 11:26:40Z, latency 20.0
  REP_B takes it over at T0 + 45 min         -> not an assignment (already assigned)
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pandas as pd
import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.writeback import resolve_from_ledger
from kpi_pipeline.cli.main import main
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.outbox import Claim
from kpi_pipeline.fixtures import RECORDED_STREAM
from kpi_pipeline_tests.support.events import (
    INTEGRATION_USER,
    MINUTE,
    QUEUE,
    REP_A,
    REP_B,
    T0,
    event,
    lead_created,
)
from kpi_pipeline_tests.support.processors import make_processor

PARTNER_QUEUE = "00G000000000009AAA"  # the test policy's "partners" rule target
ASSIGNMENT = {"Owner_Assigned_At__c", "Assignment_Latency_Minutes__c"}
AT_20 = "2026-11-18T11:26:40.000Z"  # T0 + 20 min
AT_45 = "2026-11-18T11:51:40.000Z"  # T0 + 45 min


def partner_lead(lead_id: str, *, owner: str = QUEUE) -> ChangeEvent:
    return lead_created(lead_id, T0, owner=owner, LeadSource="Partner")


def owner_change(lead_id: str, minutes: int, owner: str, *, user: str | None = None) -> ChangeEvent:
    """An owner change by a person (or another tool), not an echo of our write-back."""
    return event(
        "Lead", lead_id, "UPDATE", T0 + minutes * MINUTE, user=user or owner, OwnerId=owner
    )


def facts(ledger: Ledger, lead_id: str) -> pd.Series:
    return ledger.lead_facts_frame().set_index("Id").loc[lead_id]


def assignment(ledger: Ledger, lead_id: str) -> tuple[object, float]:
    row = facts(ledger, lead_id)
    return row.Owner_Assigned_At__c, row.Assignment_Latency_Minutes__c


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def outgoing(ledger: Ledger, processor: BatchProcessor, lead_id: str) -> dict:
    """The dirty fields of the lead's outbox row and the values a drain would send now."""
    (row,) = ledger.outbox(record_id=lead_id)
    claim = Claim(row.id, row.sobject, row.record_id, tuple(row.dirty), 0, "", row.confirmed)
    values = resolve_from_ledger(ledger, [claim], processor.owner_rules).values
    return {"dirty": set(row.dirty), **values.get(row.id, {})}


def drain(ledger: Ledger, processor: BatchProcessor) -> None:
    """Send every dirty row and have Salesforce confirm it (the outbox is clean afterwards)."""
    claims = ledger.claim_dirty(100)
    values = resolve_from_ledger(ledger, claims, processor.owner_rules).values
    ledger.confirm_sent(claims[0].token, [(c, values.get(c.id, {})) for c in claims])
    assert all(not r.dirty for r in ledger.outbox())


# --- one lead, in order ------------------------------------------------------------------------


@pytest.mark.parametrize("created_by", [QUEUE, INTEGRATION_USER], ids=["queue", "integration"])
def test_a_later_owner_change_to_a_user_is_the_assignment(ledger: Ledger, created_by: str) -> None:
    processor = make_processor(ledger)
    lead = "00Q000000000001AAA"
    processor.process([partner_lead(lead, owner=created_by)])
    row = facts(ledger, lead)
    assert (row.OwnerId, row.Routing_Rule__c, row.SLA_Minutes) == (PARTNER_QUEUE, "partners", 240)
    assert pd.isna(row.Owner_Assigned_At__c) and pd.isna(row.Assignment_Latency_Minutes__c)

    processor.process([owner_change(lead, 20, REP_A)])
    assert assignment(ledger, lead) == (at(AT_20), 20.0)
    sent = outgoing(ledger, processor, lead)
    assert sent["dirty"] >= ASSIGNMENT
    assert (sent["Owner_Assigned_At__c"], sent["Assignment_Latency_Minutes__c"]) == (AT_20, 20.0)

    processor.process([owner_change(lead, 45, REP_B)])  # a second rep: still the first time
    assert assignment(ledger, lead) == (at(AT_20), 20.0)
    assert facts(ledger, lead).OwnerId == REP_B


def test_the_integration_user_or_a_queue_as_new_owner_is_no_assignment(ledger: Ledger) -> None:
    processor = make_processor(ledger)
    lead = "00Q000000000001AAA"
    processor.process([partner_lead(lead)])
    processor.process([owner_change(lead, 10, INTEGRATION_USER)])
    processor.process([owner_change(lead, 15, QUEUE, user=REP_A)])
    assert pd.isna(facts(ledger, lead).Owner_Assigned_At__c)
    # ...and a user owner set *by* the integration user (another tool) is one.
    processor.process([owner_change(lead, 30, REP_B, user=INTEGRATION_USER)])
    assert assignment(ledger, lead) == (at("2026-11-18T11:36:40Z"), 30.0)


def test_the_time_only_moves_earlier_and_is_written_back_again(ledger: Ledger) -> None:
    processor = make_processor(ledger)
    lead = "00Q000000000001AAA"
    processor.process([partner_lead(lead), owner_change(lead, 45, REP_B)])
    assert assignment(ledger, lead) == (at(AT_45), 45.0)
    drain(ledger, processor)

    # The earlier change to REP_A arrives late: the assignment moves to it, and is dirty again.
    processor.process([owner_change(lead, 20, REP_A)])
    assert assignment(ledger, lead) == (at(AT_20), 20.0)
    assert facts(ledger, lead).OwnerId == REP_B  # the newest owner change still owns the lead
    sent = outgoing(ledger, processor, lead)
    assert sent["dirty"] >= ASSIGNMENT and "OwnerId" not in sent["dirty"]
    assert (sent["Owner_Assigned_At__c"], sent["Assignment_Latency_Minutes__c"]) == (AT_20, 20.0)
    drain(ledger, processor)

    # A later change, or the same ones again, never moves it later or dirties the row.
    processor.process([owner_change(lead, 45, REP_B), owner_change(lead, 60, REP_A)])
    processor.process([partner_lead(lead), owner_change(lead, 20, REP_A)])
    assert assignment(ledger, lead) == (at(AT_20), 20.0)
    assert all(not r.dirty for r in ledger.outbox(record_id=lead))


# --- many delivery orders ----------------------------------------------------------------------


def _deliveries(events: list[ChangeEvent], rng: random.Random) -> list[list[ChangeEvent]]:
    """The events shuffled, cut into batches, some batches delivered twice."""
    shuffled = events[:]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(0, len(shuffled) - 1)))
    batches = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    delivered: list[list[ChangeEvent]] = []
    for batch in batches:
        delivered.append(batch)
        if rng.random() < 0.5:
            delivered.append(batch[::-1])  # redelivered, in another order
    return delivered


def test_shuffled_and_duplicated_deliveries_give_the_same_assignment(ledger: Ledger) -> None:
    processor = make_processor(ledger)
    rng = random.Random(11)
    leads = [f"00Q0000000001{n:02d}AAA" for n in range(12)]
    for index, lead in enumerate(leads):
        creator = QUEUE if index % 2 == 0 else INTEGRATION_USER
        events = [
            partner_lead(lead, owner=creator),
            owner_change(lead, 10, INTEGRATION_USER),  # no assignment
            owner_change(lead, 20, REP_A),  # the first user owner
            owner_change(lead, 45, REP_B),
            event("Lead", lead, "UPDATE", T0 + 50 * MINUTE, user=REP_B, Status="Working"),
        ]
        for batch in _deliveries(events, rng):
            processor.process(batch)
        for batch in _deliveries(events, rng):  # the whole stream once more
            processor.process(batch)

    frame = ledger.lead_facts_frame().set_index("Id").loc[leads]
    assert (frame["Owner_Assigned_At__c"] == at(AT_20)).all()
    assert (frame["Assignment_Latency_Minutes__c"] == 20.0).all()
    assert (frame["OwnerId"] == REP_B).all()
    assert (frame["Routing_Rule__c"] == "partners").all()
    for lead in leads:
        sent = outgoing(ledger, processor, lead)
        assert sent["dirty"] >= ASSIGNMENT, lead
        assert (sent["Owner_Assigned_At__c"], sent["Assignment_Latency_Minutes__c"]) == (
            AT_20,
            20.0,
        )


# --- the shipped recorded stream ---------------------------------------------------------------


def test_replay_of_the_shipped_stream_assigns_the_partner_lead_a_rep_took(tmp_path: Path) -> None:
    # 00Q5g000000000HEAQ: a partner lead created 16:05:23.913Z, routed to the partner queue,
    # handed to a rep at 16:41:54.632Z -> 36 min 30.719 s = 36.51 minutes.
    assert main(["replay", str(RECORDED_STREAM), "--out", str(tmp_path)]) == 0
    with (tmp_path / "lead_facts.csv").open(newline="") as handle:
        rows = {row["Id"]: row for row in csv.DictReader(handle)}
    lead = rows["00Q5g000000000HEAQ"]
    assert (lead["Routing_Rule__c"], lead["OwnerId"][:3]) == ("partner-referrals", "005")
    assert lead["CreatedDate"] == "2026-11-18T16:05:23.913Z"
    assert lead["Owner_Assigned_At__c"] == "2026-11-18T16:41:54.632Z"
    assert lead["Assignment_Latency_Minutes__c"] == "36.51"
    with (tmp_path / "kpis" / "assignment_latency.csv").open(newline="") as handle:
        latency = [
            row
            for row in csv.DictReader(handle)
            if (row["day"], row["rule"]) == ("2026-11-18", "partner-referrals")
        ]
    (row,) = latency
    assert (row["leads"], row["assigned"], row["latency_p50"]) == ("2", "1", "36.5100")
