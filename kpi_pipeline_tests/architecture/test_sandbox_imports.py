"""Only the composition root and the CLI may import the embedded sandbox org.

Production code must work against a real org, so nothing under ``kpi_pipeline/`` imports
``kpi_pipeline.sandbox`` except ``kpi_pipeline/wiring.py``, the CLI package (``kpi_pipeline/cli/``)
and the sandbox package itself. import-linter's contract says the same (test_layers.py); this
check also sees ``importlib.import_module`` with a constant name, which import-linter cannot. Imports are
found with ``ast`` (inside functions too, relative ones resolved, and
``importlib.import_module("kpi_pipeline.sandbox...")`` with a constant name), not by text.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kpi_pipeline"
SANDBOX = "kpi_pipeline.sandbox"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module ``path`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    module = _module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("import_module", "__import__")
                )
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def may_import_sandbox(path: Path, root: Path = PACKAGE) -> bool:
    relative = path.relative_to(root)
    return relative.parts[0] in ("sandbox", "cli") or relative.as_posix() == "wiring.py"


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if may_import_sandbox(path, root):
            continue
        bad = sorted(
            m for m in imported_modules(path, root) if m == SANDBOX or m.startswith(SANDBOX + ".")
        )
        if bad:
            out.append(f"{path.relative_to(root.parent)} imports {', '.join(bad)}")
    return out


def test_no_production_module_imports_the_sandbox() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("resync_like.py", "from kpi_pipeline.sandbox.changelog import entities_for_channel\n"),
        ("cdc/codec.py", "def f():\n    import kpi_pipeline.sandbox.store as s\n    return s\n"),
        ("cdc/relative.py", "from ..sandbox import encoding\n"),
        ("pkg/__init__.py", "from .. import sandbox\n"),
        ("lazy.py", "import importlib\nimportlib.import_module('kpi_pipeline.sandbox.tls')\n"),
    ],
)
def test_the_check_catches_a_bad_module(tmp_path: Path, relative: str, source: str) -> None:
    root = tmp_path / "kpi_pipeline"
    (root / "sandbox").mkdir(parents=True)
    (root / "sandbox" / "store.py").write_text("import kpi_pipeline.sandbox.tls\n")
    (root / "wiring.py").write_text("from kpi_pipeline.sandbox.runtime import ensure_sandbox\n")
    (root / "cli").mkdir()
    (root / "cli" / "sandbox.py").write_text("from kpi_pipeline.sandbox import runtime\n")
    (root / "processing.py").write_text("from kpi_pipeline.core.events import ChangeEvent\n")
    assert violations(root) == []  # the allowed ones and a clean module pass
    bad = root / relative
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(source)
    [found] = violations(root)
    assert found.startswith(f"kpi_pipeline/{relative} imports kpi_pipeline.sandbox")
