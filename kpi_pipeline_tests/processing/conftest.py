from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.core.policy.load import RoutingPolicy, load_policy
from kpi_pipeline.core.workloads.outreach_templates import LocalRanker, load_catalog
from kpi_pipeline_tests.processing.events import AUTOMATION_USER, INTEGRATION_USER, SMB_POOL

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


@pytest.fixture
def new_ledger(tmp_path: Path) -> Iterator[Callable[[str], Ledger]]:
    opened: list[Ledger] = []

    def make(name: str = "ledger") -> Ledger:
        ledger = Ledger.from_url(f"sqlite:///{tmp_path / name}.db")
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.dispose()


def make_processor(ledger: Ledger, policy: RoutingPolicy = TEST_POLICY) -> BatchProcessor:
    return BatchProcessor(
        ledger, policy, selector=LocalRanker(), catalog=load_catalog(), client_id=CLIENT_ID
    )
