"""diffFields: a large text field's event carries a diff, not the value. The field is marked
changed with no value, never overwrites the stored value with the diff, and is re-read over
the org's REST API when a workload reads it."""

from __future__ import annotations

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.core.events import ChangeEvent, replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.sandbox.changelog import StoredChange
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, encode_change
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID
from kpi_pipeline_tests.support.ledgers import NewLedger
from kpi_pipeline_tests.support.processors import make_processor
from kpi_pipeline_tests.support.sandbox_org import SandboxOrg

CHANNEL = "/data/LeadChangeEvent"
DIFF = "--- a/Title\n+++ b/Title\n@@ -1 +1 @@\n-Engineer\n+VP Sales\n"


@pytest.fixture
def ledger(new_ledger: NewLedger) -> Ledger:
    """SQLite only (tmp_path/ledger.db), not the suite's parametrised ``ledger``."""
    return new_ledger()


def _processor(ledger: Ledger, reader=None) -> BatchProcessor:
    return make_processor(ledger, field_reader=reader)


def _over_the_wire(change: StoredChange) -> ChangeEvent:
    """Encode as the bus sends it, decode as the pipeline does."""
    schema_id, payload = encode_change(change)
    raw = RawEvent(CHANNEL, replay_id_from_int(change.replay), schema_id, payload)
    return EventDecoder(DEFAULT_SCHEMAS.schema_json).decode(raw)


def _diffed(org: SandboxOrg, lead_id: str, **diffs: str) -> ChangeEvent:
    """The org's latest change of the lead, as the bus sends a diffed field: listed in
    diffFields, its body value the diff text."""
    change = list(org.store.iter_changes(0))[-1]
    header = {**change.header, "diffFields": list(diffs)}
    fields = {**change.fields, **diffs}
    return _over_the_wire(
        StoredChange(change.replay, "Lead", header, fields, change.commit_timestamp)
    )


def _lead(org: SandboxOrg, ledger: Ledger, processor: BatchProcessor) -> str:
    lead_id = org.store.create_record(
        "Lead",
        {"LastName": "Diff", "Company": "Acme", "Title": "Engineer", "Rating": "Cold"},
        user_id=INTEGRATION_USER_ID,
    )
    created = list(org.store.iter_changes(0))[-1]
    processor.process([_over_the_wire(created)])
    assert ledger.record("Lead", lead_id).fields["Title"] == "Engineer"
    org.store.update_record(
        "Lead", lead_id, {"Title": "VP Sales", "Rating": "Hot"}, user_id=INTEGRATION_USER_ID
    )
    return lead_id


def _reads_of(org: SandboxOrg, lead_id: str) -> list[str]:
    return [r.method for r in org.data_requests(f"/sobjects/Lead/{lead_id}")]


def test_a_diffed_field_never_overwrites_the_stored_value(org: SandboxOrg, ledger: Ledger) -> None:
    processor = _processor(ledger)  # no REST reader: replay and tests without an org
    lead_id = _lead(org, ledger, processor)
    event = _diffed(org, lead_id, Title=DIFF)
    assert "Title" in event.header.changed_fields and "Title" not in event.fields
    processor.process([event])
    assert ledger.record("Lead", lead_id).fields["Title"] == "Engineer"  # not the diff text


def test_a_diffed_field_a_workload_reads_is_re_read_over_rest(
    org: SandboxOrg, ledger: Ledger
) -> None:
    processor = _processor(ledger, org.rest())
    lead_id = _lead(org, ledger, processor)
    assert _reads_of(org, lead_id) == []
    processor.process([_diffed(org, lead_id, Title=DIFF)])  # Title: outreach personalisation
    assert ledger.record("Lead", lead_id).fields["Title"] == "VP Sales"
    assert _reads_of(org, lead_id) == ["GET"]


def test_a_diffed_field_no_workload_reads_is_not_re_read(org: SandboxOrg, ledger: Ledger) -> None:
    processor = _processor(ledger, org.rest())
    lead_id = _lead(org, ledger, processor)
    processor.process([_diffed(org, lead_id, Rating="--- Cold\n+++ Hot")])
    assert _reads_of(org, lead_id) == []
    assert ledger.record("Lead", lead_id).fields["Rating"] == "Cold"


def test_an_unreachable_org_leaves_the_stored_value_and_processing_goes_on(
    org: SandboxOrg, ledger: Ledger
) -> None:
    processor = _processor(ledger, org.rest())
    lead_id = _lead(org, ledger, processor)
    org.server.faults.fail_next_requests(10)
    summary = processor.process([_diffed(org, lead_id, Title=DIFF)])
    assert summary["records"]["merged_events"] == 1
    assert ledger.record("Lead", lead_id).fields["Title"] == "Engineer"
