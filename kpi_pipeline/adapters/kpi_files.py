"""KPI rollups on disk: one CSV per rollup and day, overwritten atomically (adapter).

Layout: ``DATA_DIR/kpis/<rollup>/<YYYY-MM-DD>.csv``. A day's file is replaced whole, so
re-materializing or backfilling a partition is idempotent, and analysts can read the
files (or load them anywhere) without Dagster.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd


def kpi_partition_path(data_dir: Path, rollup: str, day: str) -> Path:
    return Path(data_dir) / "kpis" / rollup / f"{day}.csv"


def kpi_csv_text(table: pd.DataFrame) -> str:
    """The one CSV rendering of a rollup (stable float format, so equal input gives equal bytes)."""
    return table.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def write_kpi_partition(data_dir: Path, rollup: str, day: str, table: pd.DataFrame) -> Path:
    path = kpi_partition_path(data_dir, rollup, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{day}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(kpi_csv_text(table))
    os.replace(tmp, path)
    return path
