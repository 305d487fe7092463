"""The package's layout rules (DESIGN.md, "Layout"), read from the source: no import cycle, no private
name used from another module, modules and functions of a size one can read in a sitting.

A module or function may be longer than the limit when a comment on its first line (or, for a module,
anywhere in its first five lines) says why: `# long: <reason>`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jlang"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
LONG = "# long:"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The jlang module that `name` (a module path, possibly an old moved path) is, or None."""
    if name in MODULES:
        return name
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return module.__name__ if module.__name__ in MODULES else None


def _defining_module(package: str, attr: str) -> str | None:
    """Where `from package import attr` really comes from: the submodule, or the module that defines attr."""
    sub = _resolve(f"{package}.{attr}")
    if sub is not None:
        return sub
    obj = getattr(importlib.import_module(package), attr, None)
    owner = getattr(obj, "__module__", None)
    if owner in MODULES:
        return owner
    return package if package in MODULES else None


def _imports(name: str) -> set[str]:
    """Every jlang module `name` imports, at module level or inside functions, resolved through re-exports."""
    tree = ast.parse(MODULES[name].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jlang"):
                    target = _resolve(alias.name)
                    if target:
                        out.add(target)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("jlang"):
            for alias in node.names:
                target = _defining_module(node.module, alias.name)
                if target:
                    out.add(target)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    """Import edges between jlang's modules; package `__init__` re-exports are not edges (they import lazily or
    only re-export, and resolving through them above already points at the defining module)."""
    return {n: {m for m in _imports(n) if not _is_package(m)} for n in MODULES if not _is_package(n)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between jlang modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_uses(path: Path) -> list[str]:
    """`from jlang.x import _name` and `module._name` on an imported jlang module, in one file."""
    tree = ast.parse(path.read_text())
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found: list[str] = []
    jlang_modules: set[str] = set()  # local names bound to jlang modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("jlang"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{where}:{node.lineno} imports {node.module}.{alias.name}")
                if _resolve(f"{node.module}.{alias.name}"):
                    jlang_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jlang") and alias.asname:
                    jlang_modules.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in jlang_modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{where}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_used_from_another_module():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "experiments").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    files += [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    found = [use for p in sorted(files) for use in _private_uses(p)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_check_sees_both_forms(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from jlang.stats import collect as c\nfrom jlang.masks import _languages\nc._x\nc.y\n")
    assert len(_private_uses(probe)) == 2


def _has_reason(lines: list[str], start: int, end: int) -> bool:
    return any(LONG in line for line in lines[start:end])


def _too_long() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        rel = path.relative_to(ROOT)
        if len(lines) > MAX_MODULE_LINES and not _has_reason(lines, 0, 5):
            found.append(f"{rel}: {len(lines)} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES and not _has_reason(lines, first - 1, node.lineno):
                    found.append(f"{rel}:{node.lineno} {node.name}: {n} lines (> {MAX_FUNCTION_LINES})")
    return found


def test_modules_and_functions_are_readable_in_one_sitting():
    found = _too_long()
    assert not found, "too long, and no `# long: <reason>` comment says why:\n" + "\n".join(found)


@pytest.mark.parametrize("old", sorted(importlib.import_module("jlang").MOVED_MODULES))
def test_moved_modules_keep_their_old_import_path(old):
    new = importlib.import_module("jlang").MOVED_MODULES[old]
    assert importlib.import_module(old) is importlib.import_module(new)


def test_masks_and_statistics_need_no_jax():
    """NumPy-only users of masks, statistics and the overlap analyses do not pay for importing JAX (lazy API)."""
    import subprocess
    import sys

    code = (
        "import sys, jlang, jlang.masks, jlang.stats, jlang.analysis, jlang.data.langinfo; jlang.NeuronMasks; "
        "print(sorted({'jax', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_library_imports_no_torch():
    """torch is for tests, parity checks and the bridge only; transformers pulls it in, so it is imported late."""
    import subprocess
    import sys

    code = "import sys, jlang.cli.app; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
