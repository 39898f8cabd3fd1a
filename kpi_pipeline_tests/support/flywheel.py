"""Fixtures of the flywheel tests: records built the way the workloads build them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpi_pipeline.core.flywheel.records import build_flywheel_record
from kpi_pipeline_tests.support.es_server import ElasticStandIn

DAY = datetime(2026, 3, 2, tzinfo=UTC)

MakeRecord = Callable[..., dict[str, Any]]

WORKLOADS = ("lead_route", "first_touch", "outreach_template")


def spaced_records(count: int, every: timedelta) -> list[dict]:
    """``count`` records cycling through WORKLOADS, decided ``every`` apart from DAY on."""
    return [
        make_record(n, workload_id=WORKLOADS[n % 3], decided_at=DAY + n * every)
        for n in range(count)
    ]


def make_record(
    n: int,
    *,
    workload_id: str = "lead_route",
    decided_at: datetime | None = None,
    padding: int = 0,
) -> dict[str, Any]:
    """The n-th lead's decision; ``padding`` makes the line longer (size-rotation tests)."""
    lead_id = f"00Q{n:015d}"
    return build_flywheel_record(
        workload_id=workload_id,
        client_id="kpi_pipeline",
        decided_at=decided_at or DAY + timedelta(minutes=n),
        model="policy:2026-03",
        messages=[
            {"role": "system", "content": "Route the lead with policy 2026-03."},
            {"role": "user", "content": f'{{"Id":"{lead_id}","note":"{"x" * padding}"}}'},
        ],
        decision={"owner_id": f"005{n % 7:015d}", "rule_id": "default"},
        metadata={
            "lead_id": lead_id,
            "policy_version": "2026-03",
            "rule": "default",
            "replay_ids": str(n),
        },
    ).to_dict()


@pytest.fixture
def record() -> MakeRecord:
    return make_record


@pytest.fixture
def es() -> Iterator[ElasticStandIn]:
    with ElasticStandIn() as server:
        yield server
