"""nnxp.layers.base is the one module the layer families build on.

The dense layer (core.py) and the activations once imported each other, the dense layer from
inside its methods to break the cycle. Now activations.py imports only base.py from the layers
package, core.py imports base.py and activations.py at module level (one way), and neither has
an import inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nnxp
from nnxp.layers import activations, base, core

LAYERS_DIR = Path(nnxp.__file__).resolve().parent / "layers"
SIBLINGS = {p.stem for p in LAYERS_DIR.glob("*.py")} - {"__init__"}


def sibling_imports(source: str) -> tuple[set[str], set[str]]:
    """The modules of nnxp.layers that ``source`` imports: (at module level, inside functions)."""
    top: set[str] = set()
    nested: set[str] = set()
    tree = ast.parse(source)
    module_level = set(tree.body)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        names = {node.module} if node.module else {a.name for a in node.names}
        (top if node in module_level else nested).update(names & SIBLINGS)
    return top, nested


def imports_of(name: str) -> tuple[set[str], set[str]]:
    return sibling_imports((LAYERS_DIR / f"{name}.py").read_text())


def test_the_helper_sees_imports_inside_functions() -> None:
    source = ("from .base import Layer\nfrom ..validation import check_int\n"
              "def f():\n    from .activations import ReLU\n"
              "class A:\n    def g(self):\n        from . import core\n")
    assert sibling_imports(source) == ({"base"}, {"activations", "core"})


def test_activations_import_only_base() -> None:
    top, nested = imports_of("activations")
    assert top == {"base"} and not nested


def test_core_imports_base_and_activations_one_way_at_module_level() -> None:
    top, nested = imports_of("core")
    assert top == {"base", "activations"} and not nested


@pytest.mark.parametrize("name", sorted(SIBLINGS - {"base", "core"}))
def test_other_layer_modules_build_on_base_only(name: str) -> None:
    top, nested = imports_of(name)
    assert top <= {"base"} and not nested


def test_base_imports_no_layer_family() -> None:
    top, nested = imports_of("base")
    assert not top and not nested


def test_old_addresses_still_import() -> None:
    assert core.LAYERS is base.LAYERS and nnxp.layers.Layer is base.Layer is core.Layer
    assert core.BackwardError is base.BackwardError is nnxp.BackwardError
    assert core.layer_class_name is base.layer_class_name
    assert core.input_error is base.input_error
    assert base.LAYERS["Dense"] is core.Dense and base.LAYERS["ReLU"] is activations.ReLU


def test_dense_resolves_its_activation_through_activations() -> None:
    dense = core.Dense(3, 2, activation="leaky_relu")
    assert isinstance(dense.activation, activations.LeakyReLU)
    assert dense.get_config()["activation"] == activations.activation_config(dense.activation)
    with pytest.raises(TypeError, match="element-wise activation layer"):
        core.Dense(3, 2, activation=activations.Maxout(2, 2))
    with pytest.raises(ValueError, match=r"Softmax\(dim=0\).*use dim=-1"):
        core.Dense(3, 2, activation=activations.Softmax(dim=0))
