"""SLA_Breached__c judges every lead on the rollups' clock: the pipeline writes the SLA due
time in the lead's business-hours calendar (``SLA_Due_At__c``) and the formula compares
against it. Real sandbox org, SQLite and PostgreSQL ledgers (``ledger_url``).

Policy: calendar "na", America/New_York Mon-Fri 09:00-17:00, holiday Thu 2026-11-26,
the default calendar; SLA 60 minutes. As of Sat 2026-11-28 12:00Z. Worked by hand:

  L1 created Fri 11-27 16:55 EST (21:55Z), unanswered: 5 open minutes Friday, 55 on Monday
     -> due Mon 11-30 09:55 EST = 14:55Z; pending (blank). On the wall clock it was
     breached since 22:55Z Friday.
  L2 created Tue 11-17 16:30 EST (21:30Z), answered Wed 11-18 09:10 EST (14:10Z): due Wed
     09:30 EST = 14:30Z -> met (0); 1000 wall-clock minutes.
  L3 created Wed 11-25 16:30 EST (21:30Z), unanswered: 30 minutes Wed, Thanksgiving closed,
     30 Fri -> due Fri 11-27 09:30 EST = 14:30Z, before the as-of -> breached (1).
  L4 created Mon 11-23 09:00 EST (14:00Z), answered 10:30 EST (15:30Z): due 15:00Z ->
     breached (1).
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pandas as pd

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.writeback import drain_writeback
from kpi_pipeline.core.events import ChangeEvent, parse_sf_datetime
from kpi_pipeline.core.kpis.sla_views import sla_in_both_clocks
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline_tests.support.events import email_sent, lead_created
from kpi_pipeline_tests.support.paths import REPO_ROOT
from kpi_pipeline_tests.support.policies import new_york_policy
from kpi_pipeline_tests.support.processors import make_processor
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg
from kpi_pipeline_tests.support.sf_formula import evaluate
from kpi_pipeline_tests.support.writeback import RULES

FORMULA_FILE = (
    REPO_ROOT / "sf/force-app/main/default/objects/Lead/fields/SLA_Breached__c.field-meta.xml"
)
NS = "{http://soap.sforce.com/2006/04/metadata}"
AS_OF = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = load_policy(new_york_policy("sla-due-1", "09:00", "17:00", ["2026-11-26"]))
EXPECTED = {  # lead -> (SLA_Due_At__c, SLA_Breached__c as of AS_OF, rollup status)
    "L1": ("2026-11-30T14:55:00.000Z", None, "pending"),
    "L2": ("2026-11-18T14:30:00.000Z", 0, "met"),
    "L3": ("2026-11-27T14:30:00.000Z", 1, "breached"),
    "L4": ("2026-11-23T15:00:00.000Z", 1, "breached"),
}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def stream(ids: dict[str, str]) -> list[ChangeEvent]:
    return [
        lead_created(ids["L1"], ms("2026-11-27T21:55:00Z")),
        lead_created(ids["L2"], ms("2026-11-17T21:30:00Z")),
        email_sent("02s0000000000L2AAA", ids["L2"], ms("2026-11-18T14:10:00Z")),
        lead_created(ids["L3"], ms("2026-11-25T21:30:00Z")),
        lead_created(ids["L4"], ms("2026-11-23T14:00:00Z")),
        email_sent("02s0000000000L4AAA", ids["L4"], ms("2026-11-23T15:30:00Z")),
    ]


def formula() -> str:
    text = ET.parse(FORMULA_FILE).getroot().find(f"{NS}formula").text
    assert text is not None
    return text


def breached_in_org(org: SandboxOrg, lead_id: str, created: datetime) -> object:
    """SLA_Breached__c as Salesforce would compute it from the org's stored values."""
    names = ["SLA_Due_At__c", "First_Response_At__c", "Time_to_First_Response__c"]
    (row,) = org.rest().query_by_ids("Lead", names, [lead_id])
    fields = {
        "SLA_Due_At__c": parse_sf_datetime(row["SLA_Due_At__c"]),
        "First_Response_At__c": parse_sf_datetime(row["First_Response_At__c"]),
        "Time_to_First_Response__c": row["Time_to_First_Response__c"],
        "CreatedDate": created,
    }
    value = evaluate(formula(), fields, now=AS_OF)
    return None if value is None else int(value)


def our_changes(org: SandboxOrg) -> int:
    return sum(
        1 for c in org.store.iter_changes() if "client=kpi_pipeline" in c.header["changeOrigin"]
    )


def test_sla_breached_uses_the_business_hours_due_time_and_never_flaps(
    org: SandboxOrg, ledger_url: str
) -> None:
    ids = dict(zip(EXPECTED, org.create_leads(len(EXPECTED)), strict=True))
    ledger = Ledger.from_url(ledger_url)
    try:
        processor = make_processor(ledger, POLICY)
        events = stream(ids)
        processor.process(events)
        drain_writeback(ledger, org.rest(), RULES)
        frame = ledger.lead_facts_frame().set_index("Id")
        for name, (due, flag, status) in EXPECTED.items():
            lead_id = ids[name]
            (row,) = org.rest().query_by_ids("Lead", ["SLA_Due_At__c"], [lead_id])
            assert row["SLA_Due_At__c"] == due, name
            created = frame.loc[lead_id, "CreatedDate"].to_pydatetime()
            assert breached_in_org(org, lead_id, created) == flag, name
            # The org's verdict is the rollups' verdict for the same lead.
            one = frame.loc[[lead_id]].reset_index()
            counts = sla_in_both_clocks(one, as_of=AS_OF)["business_hours"]
            got = next(s for s in ("met", "breached", "pending") if getattr(counts, s) == 1)
            assert got == status, name
        # L1 on the wall clock: the old formula's verdict (breached 60 minutes after
        # creation, on a Friday evening), which the due time now corrects.
        l1 = frame.loc[[ids["L1"]]].reset_index()
        assert sla_in_both_clocks(l1, as_of=AS_OF)["wall_clock"].breached == 1

        # Re-delivery, duplicated and shuffled: the same due times, nothing new to send.
        sent = our_changes(org)
        again = events * 2
        random.Random(11).shuffle(again)
        processor.process(again)
        result = drain_writeback(ledger, org.rest(), RULES)
        assert result.report.sent == [] or result.report.requests == 0
        assert our_changes(org) == sent
        after = ledger.lead_facts_frame().set_index("Id")
        pd.testing.assert_series_equal(after["SLA_Due_At"], frame["SLA_Due_At"])
    finally:
        ledger.dispose()
