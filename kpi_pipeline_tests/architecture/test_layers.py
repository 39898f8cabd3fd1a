"""The layers hold: import-linter's contracts (pyproject.toml) pass on the package, and each kind of
wrong import, planted in a temporary copy of it, breaks the contract that forbids it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(
        REPO / "kpi_pipeline", root / "kpi_pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def test_the_package_keeps_every_contract() -> None:
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


WRONG_IMPORTS = [
    # (module that gets the import, the import, the contract that must break, what it names)
    (
        "core/events.py",
        "import sqlalchemy",
        "core-is-pure",
        "kpi_pipeline.core.events -> sqlalchemy",
    ),
    (
        "core/cursor.py",
        "from kpi_pipeline.config import Settings",
        "core-is-pure",
        "kpi_pipeline.config",
    ),
    (
        "core/events.py",
        "import kpi_pipeline.app.ingest",
        "layers",
        "kpi_pipeline.core.events -> kpi_pipeline.app.ingest",
    ),
    (
        "app/ingest.py",
        "import kpi_pipeline.adapters.llm.client",
        "layers",
        "kpi_pipeline.app.ingest -> kpi_pipeline.adapters.llm.client",
    ),
    (
        "adapters/llm/client.py",
        "import dagster",
        "dagster-only-in-the-shell",
        "kpi_pipeline.adapters.llm.client -> dagster",
    ),
    (
        "defs/cdc/jobs.py",
        "import kpi_pipeline.sandbox.store",
        "sandbox-only-from-composition-root",
        "kpi_pipeline.defs.cdc.jobs -> kpi_pipeline.sandbox.store",
    ),
    (
        "adapters/ledger/sql.py",
        "import kpi_pipeline.adapters.ledger.store",
        "no-cycles",
        "kpi_pipeline.adapters.ledger",
    ),
]


@pytest.mark.parametrize(("module", "statement", "contract", "named"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    package_copy: Path, module: str, statement: str, contract: str, named: str
) -> None:
    target = package_copy / "kpi_pipeline" / module
    original = target.read_text()
    target.write_text(original + f"\n{statement}  # planted by test_layers\n")
    try:
        done = lint(package_copy)
    finally:
        target.write_text(original)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert named in broken.replace("\n", ""), done.stdout
    assert f"{contract}" in _broken_ids(package_copy, done.stdout)


def _broken_ids(root: Path, report: str) -> set[str]:
    """Ids of the contracts the report calls BROKEN (the report names them by their `name`)."""
    import tomllib

    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    flat = " ".join(report.split())
    return {c["id"] for c in contracts if f"{' '.join(c['name'].split())} BROKEN" in flat}
