"""The processor the tests run: a small policy of their own (TEST_POLICY), the packaged
template catalog and the local ranker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.processing.records import FieldReader
from kpi_pipeline.core.policy.load import RoutingPolicy, load_policy
from kpi_pipeline.core.workloads.outreach_templates import (
    LocalRanker,
    TemplateSelector,
    load_catalog,
)
from kpi_pipeline_tests.support.events import AUTOMATION_USER, INTEGRATION_USER, SMB_POOL

CLIENT_ID = "kpi_pipeline"
# A small policy of our own, so these tests do not depend on the packaged example policy.
TEST_POLICY = load_policy(
    {
        "version": "test-1",
        "timezone": "UTC",
        "default_sla_minutes": 60,
        "fallback_owner": "005000000000009AAA",
        "automation_users": [AUTOMATION_USER],
        "integration_users": [INTEGRATION_USER],
        "pools": {
            "smb": {
                "strategy": "round_robin",
                "members": [{"user_id": user} for user in SMB_POOL],
            }
        },
        "rules": [
            {
                "id": "partners",
                "when": {"field": "LeadSource", "in": ["Partner"]},
                "target": {"queue": "00G000000000009AAA"},
                "sla_minutes": 240,
            },
            {"id": "smb-default", "target": {"pool": "smb"}},
        ],
    }
)


def wall_clock() -> datetime:
    """The wall clock, as the live job runs the processor (kpi_pipeline.wiring.batch_processor)."""
    return datetime.now(UTC)


def make_processor(
    ledger: Ledger,
    policy: RoutingPolicy = TEST_POLICY,
    *,
    clock: Callable[[], datetime] | None = None,
    selector: TemplateSelector | None = None,
    field_reader: FieldReader | None = None,
) -> BatchProcessor:
    """A processor over ``ledger`` with the packaged catalog and, unless ``selector`` is given,
    the local template ranker. ``clock=None`` is the event clock (decisions are timestamped
    from the events: replays are reproducible); ``clock=wall_clock`` is how the live job runs
    it. ``field_reader``: the org's REST API for fields an event only names (None: offline)."""
    return BatchProcessor(
        ledger,
        policy,
        selector=LocalRanker() if selector is None else selector,
        catalog=load_catalog(),
        client_id=CLIENT_ID,
        clock=clock,
        field_reader=field_reader,
    )
