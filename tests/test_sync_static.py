"""The GPU rule for what the CPU cannot run: namespace calls that synchronise CuPy.

``tests/test_sync.py`` counts synchronisations on torch CPU. CuPy's own sync sources cannot run
here, so this test reads the hot-path modules (the kernels, the layers, the losses, the
optimizers) with ``ast`` and fails on the calls whose CuPy implementation, in
array-api-compat (``array_api_compat/common/_aliases.py``, wrapped by ``cupy/_aliases.py``) or
in CuPy itself, waits for the device. Each rule carries its reason; a use that is not on the
training step's path is allowed by name in :data:`ALLOWED`, with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent / "nnxp"
HOT_PATH = sorted([*ROOT.glob("kernels/*.py"), *ROOT.glob("layers/*.py"), ROOT / "losses.py",
                   *ROOT.glob("optim/*.py")])

FORBIDDEN_CALLS = {
    "clip": "array-api-compat's generic clip (CuPy's) copies its bounds to the device with "
            "asarray and writes them through boolean masks (out[ia] = a[ia]); CuPy reads the "
            "mask count back. Use nnxp.kernels.scalars.clamp (minimum/maximum with device "
            "constants).",
    "sign": "array-api-compat's sign repairs NaN with out[isnan(x)] = nan on CuPy (and on "
            "torch): a boolean-mask write, a synchronisation. Use nnxp.kernels.scalars.sign.",
    "nonzero": "the output shape depends on the data: CuPy reads the count back.",
    "unique_all": "data-dependent output shape (a count read back).",
    "unique_counts": "data-dependent output shape (a count read back).",
    "unique_inverse": "data-dependent output shape (a count read back).",
    "unique_values": "data-dependent output shape (a count read back).",
    "repeat": "with array repeats the output shape depends on the data (a sum read back).",
    "asarray": "a Python number or list turned into a device array: a host-to-device copy per "
               "call (on torch too). Build constants once (nnxp.kernels.scalars.constant) or "
               "with xp.full, a fill on the device. (Only literals are caught here; "
               "xp.asarray(array, copy=True) is a device copy. Host arrays are test_sync's.)",
}

# torch's wrappers in array-api-compat (_two_arg(..., scalar_x1/x2=True)) turn a Python scalar
# operand of these into a tensor: torch.asarray(scalar, device=...), a blocking copy to the GPU
SCALAR_COPYING = {"maximum", "minimum", "atan2", "copysign", "hypot", "logaddexp", "nextafter",
                  "logical_and", "logical_or", "logical_xor", "equal", "not_equal", "greater",
                  "greater_equal", "less", "less_equal"}

HOST_READS = {"item", "tolist", "to_numpy", "to_float"}
"""Methods or nnxp.backend helpers that copy device data to the host and wait for it."""

# (file relative to nnxp/, function, rule): uses that are not on a training step's path
ALLOWED = {
    ("optim/lbfgs.py", "_read", "to_numpy"): "L-BFGS's one stacked read per decision point",
    ("optim/lbfgs.py", "_read", "tolist"): "the same read, of the host copy",
    ("optim/lbfgs.py", "_read", "to_float"): "L-BFGS's read of a lone value or foreign loss",
    ("optim/lbfgs.py", "_export_state", "to_float"): "state_dict, not a step",
    ("optim/lbfgs.py", "_export_state", "to_numpy"): "state_dict, not a step",
    ("optim/lbfgs.py", "_materialize", "item"): "load_state_dict, not a step",
    ("optim/lbfgs.py", "_stack_rows", "to_numpy"): "state_dict, not a step",
    ("optim/base.py", "_export_state", "to_numpy"): "state_dict, not a step",
    ("optim/base.py", "load_state_dict", "to_numpy"): "load_state_dict, not a step",
    ("optim/base.py", "_materialize", "item"): "load_state_dict, not a step",
    ("optim/clipping.py", "clip_grad_norm_", "to_float"): "the public function returns the "
                                                           "norm as a float (documented); the "
                                                           "optimizers' clip_norm does not",
    ("losses.py", "check_targets", "to_float"): "target validation, once per fit",
}


class Finding(NamedTuple):
    file: str
    line: int
    function: str
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"nnxp/{self.file}:{self.line} in {self.function}: {self.rule} — {self.reason}"


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
        and not isinstance(node.value, bool)


def _is_mask(node: ast.AST) -> bool:
    """A subscript that is a boolean mask: a comparison, a logical combination of them, or an
    ``xp.isnan``-like predicate."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return _is_mask(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
        return _is_mask(node.left) or _is_mask(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in {"isnan", "isinf", "isfinite", "logical_and", "logical_or",
                                  "logical_not", "logical_xor", "equal", "not_equal", "greater",
                                  "greater_equal", "less", "less_equal", "signbit"}
    return False


def _uses_namespace(node: ast.AST) -> bool:
    """Whether an expression calls into the array namespace (``xp.``/``self.xp.``)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            owner = sub.func.value
            if (isinstance(owner, ast.Name) and owner.id == "xp") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "xp"):
                return True
    return False


def _is_xp(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "xp") or (
        isinstance(node, ast.Attribute) and node.attr == "xp") or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_xp")


def scan(source: str, file: str) -> list[Finding]:
    """Every rule broken in ``source`` (the text of ``nnxp/<file>``)."""
    tree = ast.parse(source)
    out: list[Finding] = []
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def function_of(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return "<module>"

    def add(node: ast.AST, rule: str, reason: str) -> None:
        fn = function_of(node)
        if (file, fn, rule) not in ALLOWED:
            out.append(Finding(file, getattr(node, "lineno", 0), fn, rule, reason))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if _is_xp(node.func.value):
                literal = bool(node.args) and (_is_number(node.args[0]) or isinstance(
                    node.args[0], (ast.List, ast.Tuple, ast.Constant)))
                if name in FORBIDDEN_CALLS and (name != "asarray" or literal):
                    add(node, name, FORBIDDEN_CALLS[name])
                if name in SCALAR_COPYING and any(_is_number(a) for a in node.args):
                    add(node, f"{name} with a Python number",
                        "array-api-compat's torch wrapper copies the number to the device "
                        "(torch.asarray) on every call; pass a constant from "
                        "nnxp.kernels.scalars.constant")
            if name in HOST_READS:
                add(node, name, "copies device data to the host and waits for it")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in {"float", "int", "bool"} and node.args \
                and _uses_namespace(node.args[0]):
            add(node, f"{node.func.id}()", "a namespace result turned into a Python number: "
                                           "a device-to-host read")
        elif isinstance(node, ast.Subscript) and _is_mask(node.slice):
            add(node, "boolean-mask indexing", "a[mask] has a data-dependent shape and "
                                               "a[mask] = v compacts the mask: CuPy and torch "
                                               "read the count back; use xp.where")
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)) \
                and _uses_namespace(node.test):
            add(node, "branch on an array", "Python's truth test of a device value reads it "
                                            "back (bool(array))")
    return out


def test_the_hot_path_makes_no_call_that_synchronises_cupy() -> None:
    findings = [f for path in HOT_PATH
                for f in scan(path.read_text(), str(path.relative_to(ROOT)))]
    assert not findings, "synchronising calls on the training path:\n" + "\n".join(
        map(str, findings))


def test_every_allowance_still_names_a_real_use() -> None:
    """An allowance whose use is gone must go too (else it would silently allow a new one)."""
    used = set()
    for path in HOT_PATH:
        file = str(path.relative_to(ROOT))
        saved = dict(ALLOWED)
        for key in saved:
            if key[0] != file:
                continue
            del ALLOWED[key]
            try:
                if any((f.function, f.rule) == key[1:] for f in scan(path.read_text(), file)):
                    used.add(key)
            finally:
                ALLOWED[key] = saved[key]
    assert used == set(ALLOWED), sorted(set(ALLOWED) - used)


@pytest.mark.parametrize(("code", "rule"), [
    ("def f(x, *, xp):\n    return xp.clip(x, 0.0, 1.0)\n", "clip"),
    ("def f(x, *, xp):\n    return xp.sign(x)\n", "sign"),
    ("def f(x, *, xp):\n    return xp.nonzero(x)\n", "nonzero"),
    ("def f(x, *, xp):\n    return xp.unique_values(x)\n", "unique_values"),
    ("def f(x, *, xp):\n    return xp.maximum(x, 0.0)\n", "maximum with a Python number"),
    ("def f(x, *, xp):\n    return xp.minimum(-1, x)\n", "minimum with a Python number"),
    ("def f(x, *, xp):\n    return x * xp.asarray(2.0)\n", "asarray"),
    ("def f(x, *, xp):\n    x[x > 0] = 0.0\n    return x\n", "boolean-mask indexing"),
    ("def f(x, *, xp):\n    return x[xp.isnan(x) | (x < 0)]\n", "boolean-mask indexing"),
    ("def f(x, *, xp):\n    return float(xp.sum(x))\n", "float()"),
    ("def f(x, *, xp):\n    return xp.sum(x).item()\n", "item"),
    ("def f(x, *, xp):\n    if xp.any(x > 0):\n        return x\n    return -x\n",
     "branch on an array"),
    ("class L:\n    def f(self, x):\n        return self.xp.clip(x, 0.0, 1.0)\n", "clip"),
])
def test_each_rule_catches_its_pattern(code: str, rule: str) -> None:
    assert [f.rule for f in scan(code, "kernels/example.py")] == [rule]


@pytest.mark.parametrize("code", [
    "def f(x, *, xp):\n    return xp.maximum(x, constant(0.0, x, xp=xp))\n",
    "def f(x, *, xp):\n    return xp.where(x > 0, x, 0.0)\n",
    "def f(x, *, xp):\n    return x * 0.5 + (x > 0)\n",
    "def f(x, *, xp):\n    return xp.full((), 2.0, dtype=x.dtype, device=x.device)\n",
    "def f(x, *, xp):\n    return x[..., None] * x[1:3]\n",
    "def f(x, *, xp):\n    return int(x.shape[0])\n",
])
def test_sync_free_forms_pass(code: str) -> None:
    assert scan(code, "kernels/example.py") == []
