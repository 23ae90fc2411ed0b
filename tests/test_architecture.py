"""The dependency rules of docs/architecture.md, checked on the source itself.

- import-linter (the contracts in pyproject.toml): every import goes down the layer list, none up,
  not even one inside a function; no import circles between the modules of a package.
- Imports of difflm modules inside functions only where laziness is the point: the command line
  (difflm/cli/ and the families' cli.py / plugin.py, which keep `difflm --help` torch-free) and
  difflm/registry.py (the one module that loads plug-ins).
- No module imports another module's ``_private`` names.
- No module above ~400 lines without a stated reason (SIZE_EXCEPTIONS says each reason).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "difflm"
ROOT = SRC.parent
MAX_LINES = 400
# module -> why it is longer than MAX_LINES (keep this short: split by concept first)
SIZE_EXCEPTIONS: dict[str, str] = {}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _is_lazy_allowed(module: str) -> bool:
    parts = module.split(".")
    return (parts[:2] == ["difflm", "cli"] or module == "difflm.registry"
            or (len(parts) == 3 and parts[2] in ("cli", "plugin")))


def _imports(module: str, path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(node, the difflm module imported, whether inside a function) of every import of ``module``."""
    is_package = path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")[: len(module.split(".")) - child.level + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "difflm" or target.startswith("difflm."):
                    found.append((child, target, in_function))
            elif isinstance(child, ast.Import):
                found.extend((child, a.name, in_function) for a in child.names if a.name.startswith("difflm"))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not found: install the test extra (pip install -e '.[test]')")
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_imports_inside_functions_only_on_the_command_line_and_in_the_registry():
    offenders = [f"{path.relative_to(SRC)}:{node.lineno} imports {target}"
                 for module, path in _modules() if not _is_lazy_allowed(module)
                 for node, target, in_function in _imports(module, path) if in_function]
    assert not offenders, "imports inside functions outside cli/ and registry.py:\n" + "\n".join(offenders)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module, path in _modules():
        for node, target, _ in _imports(module, path):
            if isinstance(node, ast.ImportFrom) and target != module:
                offenders += [f"{path.relative_to(SRC)}:{node.lineno} imports {target}.{a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} imports the private module {target}")
    assert not offenders, "\n".join(offenders)


def test_no_module_is_longer_than_the_limit_without_a_reason():
    long = {str(path.relative_to(SRC)): n for _, path in _modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    unexplained = {p: n for p, n in long.items() if p not in SIZE_EXCEPTIONS}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them, or say why in SIZE_EXCEPTIONS): {unexplained}"
    stale = sorted(set(SIZE_EXCEPTIONS) - set(long))
    assert not stale, f"SIZE_EXCEPTIONS names modules that are no longer long: {stale}"


def test_the_checks_above_can_fail(tmp_path):
    """The AST helpers see what they must: a function-level import and a private name."""
    source = tmp_path / "mod.py"
    source.write_text("from .x import _hidden\n\ndef f():\n    from ..training import trainer\n")
    found = _imports("difflm.evaluation.mod", source)
    assert [(t, inside) for _, t, inside in found] == [("difflm.evaluation.x", False), ("difflm.training", True)]
    assert found[0][0].names[0].name == "_hidden"
    assert not _is_lazy_allowed("difflm.evaluation.mod") and _is_lazy_allowed("difflm.cli.generate")
