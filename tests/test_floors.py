"""The tree explains the system: floors that import only downward, and no import circle.

config (imports nothing of ours) <- core <- services (worker, uploader, dlq_inspector) <- console.
Read from the code itself (``ast``), so a new import that breaks the floors fails here first.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
#: Each package and the packages it may import. One service uses another's service layer: the
#: dashboard (uploader/web) runs the DLQ operations (dlq_inspector/operations.py) the CLI runs.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "core": {"config"},
    "worker": {"config", "core"},
    "uploader": {"config", "core", "dlq_inspector"},
    "dlq_inspector": {"config", "core"},
    "console": {"config", "core", "worker", "uploader", "dlq_inspector"},
}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
#: Function-local imports of our own modules that exist for a reason other than a circle.
LAZY_ON_PURPOSE = {
    # `encodeq` mounts `serve`; loading FastAPI and uvicorn for every other command costs ~0.8 s.
    ("uploader.web.main", "uploader.web.server"),
    ("console.up.command", "uploader.web.server"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` are for the type checker only: a type-only circle is
    allowed."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for inner in ast.walk(node)}
    return skipped


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(our module imported, whether the import is inside a function)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    in_function = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.append((name, id(node) in in_function))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target, _ in _imports(path, modules):
            if target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def test_every_package_imports_only_the_floors_below_it() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert upward == []


def test_there_is_no_import_circle() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_module_imports_one_of_ours_inside_a_function() -> None:
    """A function-local import is how a circle hides; the floors make none necessary."""
    modules = _modules()
    local = [
        f"{name} -> {target}"
        for name, path in modules.items()
        for target, inside in _imports(path, modules)
        if inside and (name, target) not in LAZY_ON_PURPOSE
    ]
    assert local == []


def test_no_module_is_a_second_house() -> None:
    long = {
        name: lines
        for name, path in _modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_a_second_module() -> None:
    """A function that does not fit on a screen is several concepts; split it or say why."""
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
