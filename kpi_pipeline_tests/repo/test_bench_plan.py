"""``make bench`` (bench/run_all.py) knows small sizes for every benchmark script: a script
without them is refused before anything runs, so one added without an entry would break the
whole command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kpi_pipeline_tests.support.harness import REPO_ROOT

BENCH_DIR = REPO_ROOT / "bench"


def _plan() -> list[list[str]]:
    code = "import json, run_all; print(json.dumps(run_all.plan([], daemon=True)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCH_DIR, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_every_benchmark_script_has_small_sizes() -> None:
    planned = {command[0] for command in _plan()}
    assert planned == {p.name for p in Path(BENCH_DIR).glob("bench_*.py")}
