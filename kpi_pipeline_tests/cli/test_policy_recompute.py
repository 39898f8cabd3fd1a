"""`kpi-pipeline policy recompute`: after a calendar change, the business-hours values of
past leads are recomputed from the ledger, queued through the outbox and reach the org;
first responses never move; a second run changes nothing. Real sandbox org, SQLite and
PostgreSQL ledgers (``ledger_url``).

Before (P1): calendar "na", America/New_York Mon-Fri 09:00-17:00, holiday 2026-11-26.
After (P2): the same calendar opens 08:00-18:00 and has no holidays. SLA 60 minutes.

  R1 created Tue 11-17 16:30 EST (21:30Z), answered Wed 11-18 09:10 EST (14:10Z)
     P1: business 30 + 10 = 40, due Wed 09:30 EST = 14:30Z
     P2: business 90 (16:30-18:00) + 70 (08:00-09:10) = 160, due Tue 17:30 EST = 22:30Z
  R2 created Wed 11-25 16:30 EST (21:30Z), unanswered
     P1: 30 Wed, Thanksgiving closed, 30 Fri -> due Fri 11-27 09:30 EST = 14:30Z
     P2: due Wed 17:30 EST = 22:30Z
  R3 created Mon 11-23 10:00 EST (15:00Z), answered 10:20 EST (15:20Z)
     both: business 20, due 11:00 EST = 16:00Z -> unchanged
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.writeback import drain_writeback
from kpi_pipeline.cli.main import main as cli_main
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline_tests.support.events import email_sent, lead_created
from kpi_pipeline_tests.support.policies import new_york_policy
from kpi_pipeline_tests.support.processors import make_processor
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg
from kpi_pipeline_tests.support.writeback import RULES

BUSINESS = "Time_to_First_Response_Business_Minutes__c"


def policy(opens: str, closes: str, holidays: list[str]) -> dict:
    return new_york_policy(f"recompute-{opens}", opens, closes, holidays)


P1 = policy("09:00", "17:00", ["2026-11-26"])
P2 = policy("08:00", "18:00", [])


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def org_row(org: SandboxOrg, lead_id: str) -> dict:
    names = ["SLA_Due_At__c", BUSINESS, "First_Response_At__c", "Time_to_First_Response__c"]
    (row,) = org.rest().query_by_ids("Lead", names, [lead_id])
    return {name: row[name] for name in names}


def recompute(url: str, policy_file: Path, capsys, *extra: str) -> dict:
    argv = ["policy", "recompute", "--policy", str(policy_file), "--ledger-url", url, *extra]
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def our_writes(org: SandboxOrg, lead_id: str) -> list[dict]:
    return [
        c.fields
        for c in org.store.iter_changes()
        if c.header["recordIds"] == [lead_id] and "client=kpi_pipeline" in c.header["changeOrigin"]
    ]


def test_recompute_after_a_calendar_change(
    org: SandboxOrg, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r1, r2, r3 = org.create_leads(3)
    events = [
        lead_created(r1, ms("2026-11-17T21:30:00Z")),
        email_sent("02s00000000000R1AA", r1, ms("2026-11-18T14:10:00Z")),
        lead_created(r2, ms("2026-11-25T21:30:00Z")),
        lead_created(r3, ms("2026-11-23T15:00:00Z")),
        email_sent("02s00000000000R3AA", r3, ms("2026-11-23T15:20:00Z")),
    ]
    ledger = Ledger.from_url(ledger_url)
    try:
        processor = make_processor(ledger, load_policy(P1))
        processor.process(events)
        drain_writeback(ledger, org.rest(), RULES)
        assert org_row(org, r1)["SLA_Due_At__c"] == "2026-11-18T14:30:00.000Z"
        assert org_row(org, r1)[BUSINESS] == 40.0
        assert org_row(org, r2)["SLA_Due_At__c"] == "2026-11-27T14:30:00.000Z"
        before = {lead: org_row(org, lead) for lead in (r1, r2, r3)}
        writes_before = {lead: len(our_writes(org, lead)) for lead in (r1, r2, r3)}

        p2 = tmp_path / "p2.json"
        p2.write_text(json.dumps(P2))
        dry = recompute(ledger_url, p2, capsys, "--dry-run")
        assert dry["changed"] == 2 and dry["dry_run"] is True
        assert [r for r in ledger.outbox() if r.status == "pending"] == []  # wrote nothing

        report = recompute(ledger_url, p2, capsys)
        assert report == {
            "policy_version": "recompute-08:00",
            "leads": 3,
            "changed": 2,
            "due_changed": 2,
            "business_minutes_changed": 1,
            "calendar_changed": 0,
            "dry_run": False,
        }
        pending = {r.record_id: set(r.dirty) for r in ledger.outbox() if r.status == "pending"}
        assert set(pending) == {r1, r2}
        assert {"SLA_Due_At__c", BUSINESS, "First_Response_At__c"} <= pending[r1]
        assert pending[r2] == {"SLA_Due_At__c"}

        drain_writeback(ledger, org.rest(), RULES)
        after = {lead: org_row(org, lead) for lead in (r1, r2, r3)}
        assert after[r1]["SLA_Due_At__c"] == "2026-11-17T22:30:00.000Z"
        assert after[r1][BUSINESS] == 160.0
        assert after[r2]["SLA_Due_At__c"] == "2026-11-25T22:30:00.000Z"
        assert after[r3] == before[r3]
        for lead in (r1, r2):  # the measured response is the org's as before
            assert after[lead]["First_Response_At__c"] == before[lead]["First_Response_At__c"]
            assert (
                after[lead]["Time_to_First_Response__c"]
                == before[lead]["Time_to_First_Response__c"]
            )
        # One update each, carrying only the derived values that changed.
        (r1_write,) = our_writes(org, r1)[writes_before[r1] :]
        assert {"SLA_Due_At__c", BUSINESS} <= set(r1_write)
        assert "First_Response_At__c" not in r1_write
        assert len(our_writes(org, r3)) == writes_before[r3]

        again = recompute(ledger_url, p2, capsys)
        assert (again["leads"], again["changed"]) == (3, 0)
        assert [r for r in ledger.outbox() if r.status == "pending"] == []
    finally:
        ledger.dispose()
