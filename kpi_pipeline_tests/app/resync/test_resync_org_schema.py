"""Re-sync from the org's own description, not the sandbox's schemas.

The sandbox org gets a custom Lead field (``Territory__c``) that the sandbox's default
schema set does not have, as an admin adds one in Setup. Its GetSchema serves the field,
the stream carries it, and the re-sync re-reads it: from the GetSchema answer staged in
the ledger with the events, or, before any Lead event was staged, from sObject describe.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger.resync_windows import LedgerResyncWindows
from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.adapters.pubsub.schemas import SCHEMAS_BY_ENTITY
from kpi_pipeline.app.ingest import DrainLimits, drain_tick
from kpi_pipeline.app.resync import EntityFields, OrgDescription, resync_open_windows
from kpi_pipeline.app.resync.run import ResyncReport
from kpi_pipeline.core.cursor import SensorCursor
from kpi_pipeline.sandbox.pubsub_server import start_pubsub_server
from kpi_pipeline.sandbox.store import INBOUND_QUEUE, INTEGRATION_USER_ID
from kpi_pipeline.sandbox.tls import ensure_tls_files
from kpi_pipeline_tests.support.ledgers import NewLedger
from kpi_pipeline_tests.support.processors import make_processor, wall_clock
from kpi_pipeline_tests.support.resync_pipeline import MINUTE, T0, gap_window, refused_window
from kpi_pipeline_tests.support.sandbox_org import TENANT_ID, SandboxOrg, sandbox_org

CHANNEL = "/data/ChangeEvents"
FIELD = "Territory__c"


@pytest.fixture
def org(tmp_path: Path) -> Iterator[SandboxOrg]:
    with sandbox_org(tmp_path) as running:
        running.store.add_custom_field("Lead", FIELD, "Text")
        yield running


@pytest.fixture
def ledger(new_ledger: NewLedger) -> Ledger:
    """SQLite only (tmp_path/ledger.db), not the suite's parametrised ``ledger``."""
    return new_ledger()


def _new_lead(org: SandboxOrg, territory: str) -> str:
    return org.store.create_record(
        "Lead",
        {"LastName": "Org", "Company": "Schema Co", "OwnerId": INBOUND_QUEUE.id, FIELD: territory},
        user_id=INTEGRATION_USER_ID,
        at_ms=T0 + MINUTE,
    )


def _stream_into(ledger: Ledger, org: SandboxOrg) -> None:
    """One sensor tick over the org's Pub/Sub API (TLS), then the staged batch processed."""
    tls = ensure_tls_files(Path(org.ca_file).parent)
    server = start_pubsub_server(
        org.store, token_validator=org.registry.is_valid, tenant_id=TENANT_ID, tls=tls
    )
    client = PubSubClient(server.target, org.static_provider(), tls=True, ca_file=org.ca_file)
    try:
        outcome = drain_tick(
            channels=[CHANNEL],
            cursor=SensorCursor(),
            fetcher=client,
            ledger=ledger,
            decode=EventDecoder(client.get_schema).decode,
            limits=DrainLimits(max_events=100, max_seconds=5, idle_return_seconds=0.5),
            is_invalid_replay=lambda _exc: False,
        )
    finally:
        client.close()
        server.stop(grace=None)
    processor = make_processor(ledger, clock=wall_clock)
    for batch in outcome.batches:
        loaded = ledger.load_batch(batch.batch_id)
        processor.process(processor.decode(loaded, EventDecoder(lambda _id: "")).events)


def test_the_sandbox_serves_an_org_specific_field_the_default_schemas_lack(
    org: SandboxOrg,
) -> None:
    assert FIELD not in {f["name"] for f in SCHEMAS_BY_ENTITY["Lead"]["fields"]}
    served = org.store.schemas.schemas["Lead"]
    assert served["fields"][-1]["name"] == FIELD
    assert served["fields"][-1]["doc"].startswith("Data:Text:00N")
    assert org.store.schemas.schema_id("Lead") != org.store.schemas.ids.get("Task") != ""
    described = org.rest().describe("Lead")
    assert {"name": FIELD, "type": "string"}.items() <= next(
        f for f in described["fields"] if f["name"] == FIELD
    ).items()


def _resync_now(org: SandboxOrg, ledger: Ledger) -> list[ResyncReport]:
    """Re-sync the ledger's open windows from the org's REST API, as the live job would."""
    return resync_open_windows(
        LedgerResyncWindows(ledger),
        org.rest(),
        make_processor(ledger, clock=wall_clock),
        now=datetime.now(UTC),
    )


def test_resync_re_reads_a_field_known_only_from_the_staged_getschema_answer(
    org: SandboxOrg, ledger: Ledger
) -> None:
    lead = _new_lead(org, "EMEA")
    _stream_into(ledger, org)
    assert ledger.record("Lead", lead).fields[FIELD] == "EMEA"  # the stream carries it
    # Changed where CDC did not deliver it; the pipeline's replay id was then refused.
    org.store.update_record(
        "Lead", lead, {FIELD: "APAC"}, user_id=INTEGRATION_USER_ID, at_ms=T0 + 5 * MINUTE
    )
    refused_window(ledger, CHANNEL, from_replay=1, from_time_ms=T0)
    describes_before = len(org.data_requests("/describe"))
    [report] = _resync_now(org, ledger)
    assert report.status == "closed", report.error
    assert report.entities == ["Lead"]  # what the stream carried on the channel
    assert ledger.record("Lead", lead).fields[FIELD] == "APAC"
    assert len(org.data_requests("/describe")) == describes_before  # staged schema used


def test_before_anything_is_staged_the_fields_come_from_describe(
    org: SandboxOrg, ledger: Ledger
) -> None:
    lead = _new_lead(org, "LATAM")
    gap_window(ledger, lead, from_replay=1, at_ms=T0)
    [report] = _resync_now(org, ledger)
    assert report.status == "closed", report.error
    assert ledger.record("Lead", lead).fields[FIELD] == "LATAM"
    assert len(org.data_requests("/sobjects/Lead/describe")) == 1


@pytest.mark.parametrize("entity", sorted(SCHEMAS_BY_ENTITY))
def test_getschema_and_describe_give_the_same_select_list(org: SandboxOrg, entity: str) -> None:
    from_schema = EntityFields.from_schema(org.store.schemas.schemas[entity])
    from_describe = EntityFields.from_describe(org.rest().describe(entity))
    assert from_schema == from_describe
    if entity in ("Contact", "Account"):  # REST names the second address's children
        assert {"OtherCity", "ShippingCity"} & set(from_schema.select)


def test_a_channel_carries_the_entities_staged_on_it(org: SandboxOrg, ledger: Ledger) -> None:
    described = OrgDescription(ledger, org.rest())
    # Nothing staged yet: the entities the workloads read.
    assert described.entities_for_channel(CHANNEL) == ("Lead", "Task", "EmailMessage")
    assert described.entities_for_channel("/data/AccountChangeEvent") == ("Account",)
    org.store.create_record("Account", {"Name": "Acme"}, user_id=INTEGRATION_USER_ID)
    _new_lead(org, "EMEA")
    _stream_into(ledger, org)
    assert OrgDescription(ledger).entities_for_channel(CHANNEL) == ("Lead", "Account")
