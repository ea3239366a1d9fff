"""No import cycles among tether's modules.

A cycle means neither module can be read (or imported, or tested) without the other, and one at
module level breaks at import time as soon as one side needs a name the other has not defined
yet. Imports under `if TYPE_CHECKING:` never run and do not count. Importing `tether.a.b` also
runs `tether/a/__init__.py`, so a module depends on the packages above every module it imports
(except its own packages, which Python imported before it).

Module-level imports (also inside a module-level `if` or `try`) must form no cycle. Imports
inside functions, which run later and keep slow imports off the start-up path, must not close
one either: the loops issue 20 took apart (data.readers -> labeling commands -> ... ->
data.readers; rollout.generate <-> rollout.vllm) were all of that kind.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tether"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, inside_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module that run: those run on import, or with
    `inside_functions` also those in function bodies."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif inside_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo += [c for c in ast.iter_child_nodes(node)
                     if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case))]
    return found


def packages_of(name: str) -> list[str]:
    """tether.a.b -> [tether, tether.a]"""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(inside_functions: bool = False) -> dict[str, set[str]]:
    """module -> the tether modules (and their packages) it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in imports(tree, inside_functions):
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
                for dependency in [*packages_of(target), target]:
                    if dependency in modules and dependency != name \
                            and dependency not in packages_of(name):
                        graph[name].add(dependency)
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
        for w in sorted(graph[v]):
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


def test_which_imports_count():
    tree = ast.parse(
        "import a\n"
        "from b import c\n"
        "try:\n    import d\nexcept ImportError:\n    import e\n"
        "if TYPE_CHECKING:\n    import f\nelse:\n    import g\n"
        "class H:\n    import i\n"
        "def j():\n    import k\n")
    names = sorted(alias.name for node in imports(tree, False) for alias in node.names)
    assert names == ["a", "c", "d", "e", "g", "i"]
    names = sorted(alias.name for node in imports(tree, True) for alias in node.names)
    assert names == ["a", "c", "d", "e", "g", "i", "k"]


def test_the_graph_has_imported_modules_and_their_packages():
    graph = import_graph()
    assert {"tether.config", "tether.errors"} <= graph["tether.cli"]
    assert "tether.models" in graph["tether.data.packing"]  # the package of an imported module
    assert "tether.data" not in graph["tether.data.sft"]  # its own package: imported before it
    # imported inside a function only
    assert "tether.labeling.collect" not in graph["tether.pipeline"]
    assert "tether.labeling.collect" in import_graph(inside_functions=True)["tether.pipeline"]


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_at_module_level():
    found = cycles(import_graph())
    assert not found, "import cycles among tether modules:\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_import_cycles_through_imports_inside_functions_either():
    found = cycles(import_graph(inside_functions=True))
    assert not found, "import cycles among tether modules (imports inside functions " \
        "counted):\n" + "\n".join(" <-> ".join(c) for c in found)
