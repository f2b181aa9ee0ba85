"""The kernel boundary is a tested property: only backend.py and random.py name array libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnxp"
FORBIDDEN = {"numpy", "cupy", "torch", "array_api_compat", "array_api_strict", "jax"}
ALLOWED = {"backend.py", "random.py"}


def forbidden_imports(source: str) -> list[str]:
    """Names of forbidden modules imported anywhere in ``source`` (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FORBIDDEN:
                found.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in FORBIDDEN:
                found.append(str(arg.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in FORBIDDEN:
                found.append(str(arg.value))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ALLOWED or p.parent != PACKAGE)


def test_package_has_modules_to_check() -> None:
    assert len(MODULES) >= 10
    assert any(p.parent.name == "kernels" for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_no_array_library(path: Path) -> None:
    bad = forbidden_imports(path.read_text())
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: only backend.py/random.py may"


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "import numpy.linalg",
        "from numpy import zeros",
        "def f():\n    import torch\n    return torch",
        "from array_api_compat import array_namespace",
        "import importlib\nimportlib.import_module('cupy')",
        "__import__('torch')",
    ],
)
def test_checker_catches_every_spelling(source: str) -> None:
    assert forbidden_imports(source), source


def test_checker_allows_relative_and_other_imports() -> None:
    assert forbidden_imports("from . import backend\nimport math\nfrom .kernels import dense") == []


def test_a_kernel_importing_numpy_would_fail(tmp_path: Path) -> None:
    """The property the suite relies on: a kernel that imports numpy is caught."""
    kernel = (PACKAGE / "kernels" / "dense.py").read_text()
    assert forbidden_imports(kernel) == []
    assert forbidden_imports("import numpy as np\n" + kernel) == ["numpy"]
