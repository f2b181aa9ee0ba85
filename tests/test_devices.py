"""One device: ``model.to`` moves everything reachable from a model, and training continues.

Every layer type of the registry and every optimizer go numpy → torch → array_api_strict's
``device1`` → numpy, training a few steps after each move; after each move, every array, every
``xp``/``device`` binding and every backend generator reachable from the model and its optimizer
must be on the target backend and device (array_api_strict refuses mixed-device arithmetic, so a
leftover would also fail the training that follows).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import backend
from nnxp.layers.base import LAYERS
from nnxp.layers.core import Dense
from nnxp.optim import OPTIMIZERS
from nnxp.random import BackendGenerator

pytest.importorskip("torch")
pytest.importorskip("array_api_strict")

ROUTE = (("torch", None), ("array_api_strict", "device1"), ("numpy", None))

# constructors for the registry's layers that need arguments, as a width-6 -> width-6 layer
_NEEDS_ARGS = {
    "Dense": lambda: Dense(6, 6, activation="prelu"),
    "Maxout": lambda: LAYERS["Maxout"](6, 6, 3),
    "BatchNorm1d": lambda: LAYERS["BatchNorm1d"](6),
    "LayerNorm": lambda: LAYERS["LayerNorm"](6),
    "Standardize": lambda: LAYERS["Standardize"](6),
}
NNXP_LAYERS = sorted(name for name, cls in LAYERS.items() if cls.__module__.startswith("nnxp."))


def _make_layer(name: str) -> Any:
    return _NEEDS_ARGS[name]() if name in _NEEDS_ARGS else LAYERS[name]()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)


def reachable(root: Any) -> list[tuple[str, Any]]:
    """Every array, backend-bound object and backend generator reachable from ``root``, with
    its path (through attributes, dicts, lists, tuples, named tuples and dataclasses)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str) -> None:
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, complex, type(None),
                                               types.ModuleType, type, types.FunctionType,
                                               types.MethodType, np.random.Generator)):
            return
        seen.add(id(obj))
        if backend.is_array(obj):
            found.append((path, obj))
            return
        if isinstance(obj, BackendGenerator):
            found.append((path, obj))
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}[{k!r}]")
            return
        if isinstance(obj, (list, tuple, set)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")
            return
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f"{path}.{f.name}")
            return
        if hasattr(obj, "xp") and hasattr(obj, "device"):  # a backend-bound object (layers)
            found.append((path, obj))
        for k, v in getattr(obj, "__dict__", {}).items():
            if k not in ("xp", "device"):
                walk(v, f"{path}.{k}")

    walk(root, "model")
    return found


def assert_all_on(model: nnxp.Sequential, name: str, device: Any) -> None:
    bad = []
    for path, obj in reachable(model):
        if backend.is_array(obj):
            where = (backend.backend_name_of(obj), str(backend.device_of(obj)))
        else:  # a layer, or a backend generator: where it creates arrays
            where = (backend.backend_name_of(obj.xp.zeros(1)), str(obj.device))
        want_device = "device1" if device == "device1" else None
        if where[0] != name or (want_device and want_device not in where[1]) or (
                not want_device and "device1" in where[1]):
            bad.append(f"{path}: {where}")
    assert not bad, f"left behind after .to({name!r}, {device!r}): " + "; ".join(bad)


def _travel(model: nnxp.Sequential, X: np.ndarray, y: np.ndarray, **fit: Any) -> None:
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, **fit)
    for name, device in ROUTE:
        assert model.to(name, device) is model
        assert_all_on(model, name, device)
        before = [nnxp.to_numpy(p).copy() for layer in model.layers
                  for p in layer.params.values()]
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, optimizer=model.optimizer)
        assert_all_on(model, name, device)  # nothing training created went elsewhere
        after = [nnxp.to_numpy(p) for layer in model.layers for p in layer.params.values()]
        if before:
            assert any(not np.array_equal(a, b) for a, b in zip(before, after)), \
                "training after the move changed no parameter"


@pytest.mark.parametrize("layer_name", NNXP_LAYERS)
def test_every_layer_type_travels_and_trains(layer_name: str, data: Any) -> None:
    X, y = data
    model = nnxp.Sequential([Dense(4, 6), _make_layer(layer_name), Dense(6, 3)], seed=1)
    _travel(model, X, y, optimizer=nnxp.optim.Adam(lr=0.01))


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_every_optimizer_travels_with_its_state(opt_name: str, data: Any) -> None:
    X, y = data
    layers = [Dense(4, 6, activation="relu"), LAYERS["BatchNorm1d"](6), LAYERS["Dropout"](0.2),
              Dense(6, 3)]
    model = nnxp.Sequential(layers, seed=2)
    _travel(model, X, y, optimizer=OPTIMIZERS[opt_name]())
    assert model.optimizer.state_dict()["state"] or opt_name == "lbfgs"


def test_dense_activation_follows_the_model(data: Any) -> None:
    """The issue's reproduction: a Dense activation used to stay on the old backend."""
    X, y = data
    model = nnxp.Sequential([Dense(4, 8, activation="relu"), Dense(8, 3)], seed=0)
    model.to("torch")
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)  # AttributeError: 'Tensor' ... astype
    model.to("array_api_strict", "device1")
    assert "device1" in str(model.layers[0].activation.device)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
