"""No import cycles among tether's modules.

A cycle means neither module can be read (or imported, or tested) without the other, and it
breaks at import time as soon as one side needs a name the other has not defined yet. Only
imports that run when a module is imported count: those at module level (also inside a
module-level `if` or `try`), not those inside functions, which run later, and not those under
`if TYPE_CHECKING:`, which never run. Importing `tether.a.b` also runs `tether/a/__init__.py`,
so a module depends on the packages above every module it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tether"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run on import: walk the module body, not into functions."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += [c for c in ast.iter_child_nodes(node)
                     if isinstance(c, (ast.stmt, ast.excepthandler))]
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the tether modules (and their packages) it imports at module level."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: `from . import x`, `from ..y import z`
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    if ancestor in modules and ancestor != name:
                        graph[name].add(ancestor)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted:
    every import cycle lies inside one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_only_imports_that_run_on_import_count():
    tree = ast.parse(
        "import a\n"
        "from b import c\n"
        "try:\n    import d\nexcept ImportError:\n    import e\n"
        "if TYPE_CHECKING:\n    import f\nelse:\n    import g\n"
        "class H:\n    import i\n"
        "def j():\n    import k\n")
    names = sorted(alias.name for node in module_level_imports(tree) for alias in node.names)
    assert names == ["a", "c", "d", "e", "g", "i"]


def test_the_graph_has_imported_modules_and_their_packages():
    graph = import_graph()
    assert {"tether.config", "tether.errors"} <= graph["tether.cli"]
    assert "tether.data" in graph["tether.data.sft"]  # the package of an imported module


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles among tether modules:\n" + "\n".join(
        " <-> ".join(c) for c in found)
