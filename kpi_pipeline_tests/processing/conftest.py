from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kpi_pipeline.ledger import Ledger
from kpi_pipeline.policies.load import load_policy
from kpi_pipeline.processing import BatchProcessor
from kpi_pipeline.workloads.outreach_templates import LocalRanker, load_catalog

CLIENT_ID = "kpi_pipeline"


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


def make_processor(ledger: Ledger) -> BatchProcessor:
    return BatchProcessor(
        ledger, load_policy(), selector=LocalRanker(), catalog=load_catalog(), client_id=CLIENT_ID
    )
