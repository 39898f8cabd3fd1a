"""Fixtures: a sandbox org (SQLite store + REST server on an ephemeral loopback port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kpi_pipeline_tests.salesforce.sandbox_org import SandboxOrg, sandbox_org


@pytest.fixture
def org(tmp_path: Path) -> Iterator[SandboxOrg]:
    with sandbox_org(tmp_path) as running:
        yield running
