"""Imports inside nnxp point one way: no cycle, function-level imports included.

The graph is read from the source with ``ast`` (every ``import`` / ``from ... import`` anywhere in
a module, except under ``if TYPE_CHECKING:``, which never runs), so an import hidden inside a
function to dodge a cycle at load time is still an edge here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnxp"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import node that can run: ``if TYPE_CHECKING:`` bodies are skipped."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}`` for the package at ``root``."""
    top = root.name
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level == 0:
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            else:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                if node.module:
                    base = f"{base}.{node.module}"
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for target in targets:
                # "import nnxp.a.b" needs nnxp.a.b; keep the longest name that is a module
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == top and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            connect(v)
    return sorted(found)


def test_nnxp_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) >= 30 and "nnxp.optim.base" in graph
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) for c in found)
    assert not found, f"import cycles inside nnxp: {detail}"


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


@pytest.mark.parametrize("b_source", [
    "from . import a\n",                                   # module level
    "def f():\n    from .a import thing\n    return thing\n",  # hidden in a function
    "import pkg.a\n",                                      # absolute
])
def test_a_cycle_is_caught_however_it_is_spelled(tmp_path: Path, b_source: str) -> None:
    pkg = _write(tmp_path, {"__init__.py": "", "a.py": "from .b import g\n", "b.py": b_source})
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_type_checking_imports_and_subpackages_resolve(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n",
        "b.py": "from .sub import c\nfrom .sub.c import h\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == set()
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert cycles(graph) == []


# ----------------------------------------------------------------------------------------------
# Modules talk through public names: no reaching into another object's private attributes
# ----------------------------------------------------------------------------------------------

NAMEDTUPLE_API = {"_fields", "_asdict", "_replace", "_make"}  # public, despite the underscore
ALLOWED_PRIVATE = {
    ("random.py", "child._rng"),  # a Generator seeding the child Generator it just created
    ("sklearn.py", "estimator._validate_data"),  # scikit-learn's own (older) estimator API
}


def private_reaches(source: str) -> list[str]:
    """``obj._name`` accesses where ``obj`` is not ``self``/``cls``/``type(self)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in NAMEDTUPLE_API):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                and owner.func.id == "type" and len(owner.args) == 1
                and isinstance(owner.args[0], ast.Name) and owner.args[0].id == "self"):
            continue
        found.append(ast.unparse(node))
    return found


def test_no_module_reaches_into_private_attributes() -> None:
    bad = [(str(p.relative_to(PACKAGE)), hit) for p in sorted(PACKAGE.rglob("*.py"))
           for hit in private_reaches(p.read_text())]
    bad = [b for b in bad if (Path(b[0]).name, b[1]) not in ALLOWED_PRIVATE]
    assert not bad, f"private attributes used from outside their class: {bad}"


def test_private_reach_checker() -> None:
    source = ("def f(model, self):\n    model._snapshot()\n    self._ok()\n"
              "    type(self)._ok2\n    record._asdict()\n    x.__class__\n")
    assert private_reaches(source) == ["model._snapshot"]


def test_the_array_alias_has_one_home() -> None:
    """``Array`` is declared once, in nnxp/typing.py, and imported from there everywhere."""
    declared = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                for node in ast.parse(p.read_text()).body
                if isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id == "Array"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert declared == ["typing.py"]
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "Array" for a in node.names):
                assert node.module == "typing" and node.level >= 1, (path, node.module)
