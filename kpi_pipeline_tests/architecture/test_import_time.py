"""Importing any module of the package does nothing: it reads no settings, creates no file or
directory, changes no environment variable and swaps no library global. Entry points (the CLI,
the Dagster definitions when they load, the run worker's resource) do those things."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, sys
import prometheus_client.values

before_env = dict(os.environ)
before_value_class = prometheus_client.values.ValueClass
import kpi_pipeline

failed = {}
for info in pkgutil.walk_packages(kpi_pipeline.__path__, "kpi_pipeline."):
    if ".migrations." in info.name + ".":  # alembic's env.py runs only under alembic
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:  # noqa: BLE001 - reported by name below
        failed[info.name] = f"{type(exc).__name__}: {exc}"[:300]
changed = sorted(k for k in set(before_env) | set(os.environ) if before_env.get(k) != os.environ.get(k))
print(json.dumps({
    "modules": len(sys.modules),
    "failed": failed,
    "env_changed": changed,
    "value_class_swapped": prometheus_client.values.ValueClass is not before_value_class,
}))
"""


def test_importing_every_module_reads_no_settings_and_touches_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # Unparseable on purpose: a module that reads settings at import fails to import.
        "KPI_SENSOR_INTERVAL_SECONDS": "not-a-number",
        "KPI_DATA_DIR": str(tmp_path / "data"),
        "KPI_METRICS_DIR": str(tmp_path / "metrics"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["env_changed"] == []
    assert report["value_class_swapped"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]  # no data or metrics dir
    assert list(workdir.iterdir()) == []


def test_a_module_that_reads_settings_at_import_is_caught(tmp_path: Path) -> None:
    """The check above can fail: the same unparseable setting breaks a settings read."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KPI_SENSOR_INTERVAL_SECONDS": "not-a-number"}
    done = subprocess.run(
        [sys.executable, "-c", "from kpi_pipeline.config import get_settings; get_settings()"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "sensor_interval_seconds" in done.stderr
