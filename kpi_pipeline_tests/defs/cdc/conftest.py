"""Fixtures of the live-path tests that run the Dagster shell in one process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline_tests.support.sandbox_pipeline import small_sandbox_pipeline


@pytest.fixture
def sandbox_env() -> dict[str, str]:
    """Settings on top of the small sandbox's (a module overrides this fixture to change them):
    by default one sensor tick stages every seeded event."""
    return {"KPI_CDC_MAX_EVENTS_PER_TICK": "1000"}


@pytest.fixture
def small_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> Iterator[PipelineResource]:
    with small_sandbox_pipeline(tmp_path, monkeypatch, **sandbox_env) as pipeline:
        yield pipeline
