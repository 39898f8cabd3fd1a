"""Time_to_First_Response_Business_Minutes__c reaches the sandbox org with the other
first-response fields (one group), and a later recomputation of only the business minutes
(the lead's calendar became known after its response) is sent on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.writeback import drain_writeback
from kpi_pipeline.core.workloads.first_touch import FirstResponse
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg
from kpi_pipeline_tests.support.writeback import RULES, org_value

CREATED = datetime(2026, 11, 20, 21, 30, tzinfo=UTC)  # Friday 16:30 in New York
BUSINESS = "Time_to_First_Response_Business_Minutes__c"


def test_business_minutes_travel_with_the_first_response(org: SandboxOrg, ledger_url: str):
    ledger = Ledger.from_url(ledger_url)
    (lead,) = org.create_leads(1)
    response = FirstResponse(
        at=CREATED + timedelta(minutes=3930),
        source="Task",
        record_id="00T000000000001AAA",
        user_id="005000000000030AAA",
        minutes=3930.0,
    )
    with ledger.write() as conn:
        ledger.ensure_lead_facts(conn, lead, created=CREATED, owner_id=None)
        assert ledger.improve_first_response(conn, lead, response)
        ledger.set_clocks(conn, lead, due_at=None, business_minutes=3930.0)  # 24x7 so far
        ledger.mark_dirty(conn, "Lead", lead, ["First_Response_At__c"])
    outbox = {r.record_id: r for r in ledger.outbox()}
    assert BUSINESS in outbox[lead].dirty  # the group pulled it in
    drain_writeback(ledger, org.rest(), RULES)
    assert org_value(org, lead, "Time_to_First_Response__c") == 3930.0
    assert org_value(org, lead, BUSINESS) == 3930.0

    # The routing step now tells its calendar: 90 open minutes. Only that value changed.
    with ledger.write() as conn:
        ledger.set_clocks(conn, lead, due_at=None, business_minutes=90.0)
        ledger.mark_dirty(conn, "Lead", lead, [BUSINESS])
    result = drain_writeback(ledger, org.rest(), RULES)
    assert len(result.report.sent) == 1
    ours = [
        c
        for c in org.store.iter_changes()
        if c.header["recordIds"] == [lead] and "client=kpi_pipeline" in c.header["changeOrigin"]
    ]
    # The rest of the group equals what the org confirmed, so only the new value is sent.
    assert BUSINESS in ours[-1].fields and "First_Response_At__c" not in ours[-1].fields
    assert org_value(org, lead, BUSINESS) == 90.0
    assert org_value(org, lead, "Time_to_First_Response__c") == 3930.0
    ledger.dispose()
