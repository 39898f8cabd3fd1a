"""The tests' own layout: they mirror the package, and share code only through support/.

(a) No module of kpi_pipeline_tests imports a test module (``test_*.py``) or a ``conftest.py``,
    absolutely or relatively, at any depth: what tests share lives in ``support/`` (fixtures
    used across folders are registered by the root conftest's ``pytest_plugins``).
(b) Every ``test_*.py`` sits under a folder named after the layer it tests (core, telemetry,
    app, adapters, defs, cli, web, sandbox), or under architecture/ (the layout rules) or
    repo/ (artefacts that are not Python modules); at the root only test_docs_in_step.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "kpi_pipeline"
MIRRORED = {"core", "telemetry", "app", "adapters", "defs", "cli", "web", "sandbox"}
ALLOWED_TOP = MIRRORED | {"architecture", "repo"}
ROOT_TESTS = {"test_docs_in_step.py"}


def _python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if "node_modules" not in path.parts:
            yield path


def _imported_names(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in ``path``, relative ones resolved against the
    package ``root`` is (``from x import y`` yields both ``x`` and ``x.y``: y may be a module)."""
    package = path.relative_to(root.parent).parts[:-1]  # the package the module is in
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def imports_of_tests(root: Path) -> list[str]:
    """``file:line imports name`` for each import of a test module or a conftest under ``root``."""
    found = []
    for path in _python_files(root):
        for line, name in _imported_names(path, root):
            parts = name.split(".")
            if parts[0] != root.name:
                continue
            if parts[-1].startswith("test_") or parts[-1] == "conftest":
                found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(found))


def misplaced_tests(root: Path) -> list[str]:
    """Test modules outside the allowed folders."""
    found = []
    for path in sorted(root.rglob("test_*.py")):
        parts = path.relative_to(root).parts
        if "node_modules" in parts:
            continue
        allowed = parts[0] in ROOT_TESTS if len(parts) == 1 else parts[0] in ALLOWED_TOP
        if not allowed:
            found.append(str(path.relative_to(root)))
    return found


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    assert imports_of_tests(TESTS) == [], "move what they share to kpi_pipeline_tests/support/"


def test_every_test_module_sits_in_a_folder_of_the_layout() -> None:
    assert misplaced_tests(TESTS) == [], (
        f"put test modules under one of {sorted(ALLOWED_TOP)} (ARCHITECTURE.md, Tests)"
    )


def test_the_mirrored_folders_are_the_packages_layers() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert layers >= MIRRORED
    assert {p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= (
        ALLOWED_TOP | {"support"}
    )


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kpi_pipeline_tests"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("module", "text", "named"),
    [
        ("app/test_a.py", "from kpi_pipeline_tests.core.test_b import helper\n", "core.test_b"),
        ("app/test_a.py", "import kpi_pipeline_tests.app.conftest\n", "app.conftest"),
        ("app/test_a.py", "from kpi_pipeline_tests.core import test_b\n", "core.test_b"),
        ("app/test_a.py", "from .test_b import helper\n", "app.test_b"),
        ("app/sub/test_a.py", "from ..conftest import CLIENT_ID\n", "app.conftest"),
        ("app/test_a.py", "from . import conftest\n", "app.conftest"),
        (
            "support/x.py",
            "def f():\n    from kpi_pipeline_tests.cli.test_c import y\n",
            "cli.test_c",
        ),
    ],
)
def test_an_import_of_a_test_module_or_a_conftest_is_caught(
    tmp_path: Path, module: str, text: str, named: str
) -> None:
    root = _tree(tmp_path, {module: text})
    (found,) = imports_of_tests(root)
    assert found.startswith(f"{module}:")
    assert found.endswith(f"kpi_pipeline_tests.{named}")


def test_imports_of_support_and_of_the_package_pass(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/test_a.py": (
                "from kpi_pipeline_tests.support.events import event\n"
                "from kpi_pipeline_tests.support import harness\n"
                "from kpi_pipeline.app import ingest\n"
                "from ..support.events import lead_created\n"
            )
        },
    )
    assert imports_of_tests(root) == []


def test_a_test_module_outside_the_layout_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/workloads/test_ok.py": "",
            "repo/test_ok.py": "",
            "test_docs_in_step.py": "",
            "workloads/test_old_area.py": "",
            "test_loose.py": "",
            "support/test_helper.py": "",
        },
    )
    assert misplaced_tests(root) == [
        "support/test_helper.py",
        "test_loose.py",
        "workloads/test_old_area.py",
    ]
