"""Rollup tables as Markdown, for Dagster asset metadata and the README (pure)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def markdown_table(df: pd.DataFrame, max_rows: int = 20) -> str:
    """A GitHub-flavoured Markdown table of the first ``max_rows`` rows (for Dagster metadata)."""
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    header = "| " + " | ".join(str(column) for column in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    shown = df.head(max_rows)
    body = [
        "| " + " | ".join(_cell(value) for value in row) + " |"
        for row in shown.itertuples(index=False, name=None)
    ]
    lines = [header, rule, *body]
    if len(df) > len(shown):
        lines.append(f"\n… {len(df) - len(shown)} more rows ({len(df)} in all)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}" if abs(value) < 1e4 else f"{float(value):.0f}"
    return str(value).replace("|", "\\|")
