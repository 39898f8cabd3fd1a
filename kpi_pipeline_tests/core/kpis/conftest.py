"""Fixtures of the KPI rollup tests."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline_tests.support.kpi_frames import hand_built_ledger


@pytest.fixture
def ledger() -> pd.DataFrame:
    """The hand-built lead-facts frame of support/kpi_frames.py (test_rollups.py lists its
    leads); a frame here, where other folders' ``ledger`` is a Ledger."""
    return hand_built_ledger()
