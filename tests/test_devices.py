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


# --- CuPy on a GPU other than the current one: the plumbing, with fakes --------------------
# CuPy is not installed on the CPU machines that run this suite. These tests exercise nnxp's
# logic against a fake ``cupy`` whose "current device" is a global; what they cannot show
# (CuPy's own kernels honouring the current device) needs tests/test_devices.py's GPU tests.


class _FakeCuda:
    """``cupy.cuda``: ``Device(n)`` as a context that makes ``n`` current; streams per device."""

    def __init__(self) -> None:
        self.current = 0
        self.synchronized: list[int] = []
        cuda = self

        class Device:
            def __init__(self, device: Any = None) -> None:
                self.id = cuda.current if device is None else int(device)

            def __int__(self) -> int:
                return self.id

            def __enter__(self) -> Device:
                self.previous, cuda.current = cuda.current, self.id
                return self

            def __exit__(self, *exc: Any) -> None:
                cuda.current = self.previous

        class Stream:
            def __init__(self, device: int) -> None:
                self.device = device

            def synchronize(self) -> None:
                cuda.synchronized.append(self.device)

        self.Device = Device
        self.get_current_stream = lambda: Stream(cuda.current)


def _fake_base(cuda: _FakeCuda) -> Any:
    """A stand-in for array_api_compat.cupy whose creation functions ignore ``device=`` and
    allocate on the current device, as array-api-compat's do."""
    class Arr:
        def __init__(self) -> None:
            self.device = cuda.current

    def make(*args: Any, device: Any = None, **kwargs: Any) -> Arr:
        return Arr()

    names = {f: make for f in backend._CREATION + backend._CREATION_LIKE}
    return types.SimpleNamespace(__name__="array_api_compat.cupy", __doc__="fake",
                                 matmul=lambda a, b: None, **names)


def test_cupy_namespace_honours_device_for_every_creation_function() -> None:
    cuda = _FakeCuda()
    base = _fake_base(cuda)
    xp = backend._cupy_namespace(base, cuda.Device)
    assert backend._cupy_namespace(base, cuda.Device) is xp  # one per base: `xp is xp` holds
    assert xp.__name__ == "array_api_compat.cupy" and xp.matmul is base.matmul
    for name in backend._CREATION:
        assert getattr(xp, name)((2,), device=1).device == 1, name
        assert getattr(xp, name)((2,)).device == 0, name  # no device: the current one
    on_gpu1 = xp.zeros((2,), device=1)
    for name in backend._CREATION_LIKE:
        assert getattr(xp, name)(on_gpu1).device == 1, f"{name} follows its argument"
    assert cuda.current == 0  # restored after every call


def test_cupy_wrapper_covers_every_creation_function_that_ignores_device() -> None:
    """array-api-compat's creation functions that accept ``device=`` and only check it (CuPy
    allocates them on the current GPU): each must be wrapped. A new one fails this test."""
    import inspect

    from array_api_compat.common import _aliases

    ignoring = {name for name, fn in vars(_aliases).items()
                if inspect.isfunction(fn) and "_check_device(xp, device)" in inspect.getsource(fn)}
    assert ignoring and ignoring <= set(backend._CREATION + backend._CREATION_LIKE)


@pytest.fixture
def fake_cupy(monkeypatch: pytest.MonkeyPatch) -> _FakeCuda:
    cuda = _FakeCuda()
    monkeypatch.setitem(__import__("sys").modules, "cupy", types.SimpleNamespace(cuda=cuda))
    return cuda


def test_synchronize_waits_on_the_backends_device(fake_cupy: _FakeCuda,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    xp = _fake_base(fake_cupy)
    monkeypatch.setattr(backend, "_default", backend.BackendInfo("cupy", xp, 1))
    backend.synchronize()
    backend.synchronize(2)
    assert fake_cupy.synchronized == [1, 2] and fake_cupy.current == 0


def test_device_scope_makes_the_device_current_on_cupy_only(fake_cupy: _FakeCuda) -> None:
    with backend.device_scope(_fake_base(fake_cupy), 1):
        assert fake_cupy.current == 1
    assert fake_cupy.current == 0
    with backend.device_scope(backend.host_namespace(), "cpu"):
        assert fake_cupy.current == 0


def test_model_entry_points_run_under_the_models_device(data: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """fit, partial_fit, train_on_batch, predict, predict_proba, evaluate, the snapshots and
    to() run their array work inside backend.device_scope(model.xp, model.device)."""
    X, y = data
    depth = [0]
    entered: list[Any] = []

    class Scope:
        def __init__(self, xp: Any, device: Any) -> None:
            entered.append(device)

        def __enter__(self) -> None:
            depth[0] += 1

        def __exit__(self, *exc: Any) -> None:
            depth[0] -= 1

    monkeypatch.setattr(backend, "device_scope", Scope)
    model = nnxp.Sequential([Dense(4, 6, activation="relu"), Dense(6, 3)], seed=0)
    forward = model.forward
    calls = [0]

    def checked_forward(x: Any, *, training: bool = False) -> Any:
        assert depth[0] > 0, "array work outside the model's device scope"
        calls[0] += 1
        return forward(x, training=training)

    monkeypatch.setattr(model, "forward", checked_forward)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, validation_data=(X, y))
    model.partial_fit(X, y)
    model.train_on_batch(X, y)
    model.predict(X)
    model.predict_proba(X)
    model.evaluate(X, y)
    assert calls[0] >= 8 and set(entered) == {"cpu"}
    model.to("array_api_strict", "device1")
    assert any("device1" in str(d) for d in entered)


# --- host input is cast on the host, before its one transfer ----------------------------


@pytest.fixture
def transfers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...], int]]:
    """Every host-to-backend copy nnxp makes (``backend._from_numpy`` is the one path), as
    ``(dtype, shape, bytes)``."""
    seen: list[tuple[str, tuple[int, ...], int]] = []
    real = backend._from_numpy

    def spy(host: np.ndarray, xp: Any, device: Any) -> Any:
        seen.append((host.dtype.name, tuple(host.shape), int(host.nbytes)))
        return real(host, xp, device)

    monkeypatch.setattr(backend, "_from_numpy", spy)
    return seen


@pytest.mark.parametrize("spec", ["torch", "array_api_strict:device1"])
def test_float64_host_input_crosses_once_as_float32(spec: str, transfers: list[Any]) -> None:
    rng = np.random.default_rng(5)
    X64, Xv64 = rng.normal(size=(40, 4)), rng.normal(size=(12, 4))  # float64, as X / 16 is
    y64, yv64, w64 = rng.normal(size=(40, 2)), rng.normal(size=(12, 2)), rng.uniform(size=40)

    def run(X: Any, y: Any, w: Any, Xv: Any, yv: Any) -> list[np.ndarray]:
        with nnxp.use_backend(spec):
            model = nnxp.Sequential([Dense(4, 8, activation="tanh"), Dense(8, 2)], seed=3,
                                    loss="mse")
        transfers.clear()
        model.fit(X, y, sample_weight=w, validation_data=(Xv, yv), epochs=2, batch_size=8,
                  verbose=0, shuffle=False)
        fit_moves = list(transfers)
        transfers.clear()
        pred = nnxp.to_numpy(model.predict(Xv))
        scores = model.evaluate(Xv, yv)
        return [fit_moves, list(transfers), pred, np.array(list(scores.values()))]

    fit64, eval64, pred64, scores64 = run(X64, y64, w64, Xv64, yv64)
    f32 = [a.astype(np.float32) for a in (X64, y64, w64, Xv64, yv64)]
    _, _, pred32, scores32 = run(*f32)
    # exactly one transfer per array, each in float32: half the bytes of the float64 input
    for a in (X64, y64, w64, Xv64, yv64):
        moves = [t for t in fit64 if t[1] == a.shape and t[0] != "int64"]
        assert moves == [("float32", a.shape, a.nbytes // 2)], (a.shape, fit64)
    assert all(t[0] != "float64" for t in fit64 + eval64), fit64 + eval64
    assert [t for t in eval64 if t[1] == Xv64.shape] == [("float32", Xv64.shape,
                                                           Xv64.nbytes // 2)] * 2
    np.testing.assert_array_equal(pred64, pred32)  # identical results
    np.testing.assert_array_equal(scores64, scores32)


def test_host_cast_keeps_the_checks_and_their_messages() -> None:
    with nnxp.use_backend("torch"):
        model = nnxp.Sequential([Dense(2, 1)], loss="mse")
    with pytest.raises(ValueError, match=r"X contains 1 NaN or infinite value\(s\) \(after "
                                         r"casting to float32\)"):
        model.predict(np.array([[1e300, 1.0], [np.nan, 2.0]])[:1])  # overflows in float32
    with pytest.raises(TypeError, match="X must be numeric, got dtype complex128"):
        model.predict(np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match=r"sample_weight contains NaN or infinite values"):
        model.fit(np.ones((2, 2)), np.ones(2), sample_weight=[1.0, np.inf], verbose=0)
    assert backend.cast_host_data([[1, 2]], "float32").dtype == np.float32  # lists too
    strings = np.array(["a"])
    assert backend.cast_host_data(strings, "float32") is strings  # left for the checks


# --- generator states in checkpoints: CuPy's too --------------------------------------------


class _FakeCupyBits:
    """Like CuPy's XORWOW: the whole state is a device buffer (``_state``, int8) that every draw
    reads and advances in place."""

    def __init__(self, seed: int) -> None:
        self._state = np.random.default_rng(seed).integers(-128, 127, size=96, dtype=np.int8)


class _FakeCupyGenerator:
    def __init__(self, seed: int) -> None:
        self.bit_generator = _FakeCupyBits(seed)

    def random(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        state = self.bit_generator._state
        rng = np.random.default_rng(np.frombuffer(state.tobytes(), np.uint32))
        out = rng.random(shape, dtype=dtype)
        state[...] = rng.integers(-128, 127, size=state.shape, dtype=np.int8)
        return out


@pytest.fixture
def fake_cupy_random(fake_cupy: _FakeCuda, monkeypatch: pytest.MonkeyPatch) -> Any:
    import sys

    module = sys.modules["cupy"]
    monkeypatch.setattr(module, "random", types.SimpleNamespace(default_rng=_FakeCupyGenerator),
                        raising=False)
    monkeypatch.setattr(module, "asarray", np.asarray, raising=False)
    xp = types.ModuleType("array_api_compat.cupy")
    xp.float32, xp.float64 = np.float32, np.float64  # type: ignore[attr-defined]
    return xp, fake_cupy.Device(1)


def test_cupy_generator_state_round_trips_through_a_checkpoint(fake_cupy_random: Any,
                                                               tmp_path: Any) -> None:
    import json

    from nnxp import archive

    xp, device = fake_cupy_random
    layer = types.SimpleNamespace(xp=xp, device=device, generator=BackendGenerator(5, xp, device))
    assert layer.generator.kind == "cupy"
    layer.generator.uniform((7,), "float32")
    arrays: dict[str, Any] = {}
    record = json.loads(json.dumps(archive._generator_states(layer, arrays, "layers/0/g")))
    with open(tmp_path / "g.npz", "wb") as file:
        backend.save_npz(file, arrays)
    expected = layer.generator.uniform((3, 4), "float32")

    resumed = types.SimpleNamespace(xp=xp, device=device,
                                    generator=BackendGenerator(77, xp, device))
    archive._restore_generators(resumed, record, backend.load_npz(tmp_path / "g.npz"))
    np.testing.assert_array_equal(resumed.generator.uniform((3, 4), "float32"), expected)


def test_cupy_state_is_written_in_place_on_its_device(fake_cupy_random: Any,
                                                      fake_cupy: _FakeCuda) -> None:
    xp, device = fake_cupy_random
    g = BackendGenerator(5, xp, device)
    state = g.get_state()
    assert state.dtype == np.uint8 and state.nbytes == 96
    other = BackendGenerator(6, xp, device)
    buffer = other._rng.bit_generator._state
    other.set_state(state)
    assert other._rng.bit_generator._state is buffer  # CuPy's kernels hold its address
    np.testing.assert_array_equal(other.uniform((5,), "float64"), g.uniform((5,), "float64"))
    with pytest.raises(ValueError, match="does not fit this generator's 96-byte state"):
        other.set_state(state[:48])


# --- GPU only: these run where CuPy sees a GPU (NNXP_TEST_BACKENDS=cupy on a GPU machine) ------


def _cupy_gpus() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no cupy, no driver, no GPU: skip
        return 0


@pytest.mark.skipif(_cupy_gpus() < 1, reason="GPU only: needs CuPy and a GPU")
def test_gpu_cupy_resume_with_dropout_is_bit_identical(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def model(seed: int) -> nnxp.Sequential:
        return nnxp.Sequential([Dense(5, 16, activation="relu"), LAYERS["Dropout"](0.3),
                                Dense(16, 2)], seed=seed)

    with nnxp.use_backend("cupy"):
        full = model(5)
        full.fit(X, y, optimizer=nnxp.optim.Adam(lr=0.01), epochs=4, batch_size=16, verbose=0)
        first = model(5)
        first.fit(X, y, optimizer=nnxp.optim.Adam(lr=0.01), epochs=2, batch_size=16, verbose=0)
        first.save(tmp_path / "ckpt.npz")
        resumed = model(123)
        resumed.fit(X, y, optimizer=nnxp.optim.Adam(lr=0.01), epochs=4, batch_size=16,
                    verbose=0, resume_from=tmp_path / "ckpt.npz")
    for a, b in zip(full.layers, resumed.layers):
        for key in a.params:
            np.testing.assert_array_equal(nnxp.to_numpy(a.params[key]),
                                          nnxp.to_numpy(b.params[key]))


@pytest.mark.skipif(_cupy_gpus() < 2, reason="GPU only: needs CuPy and two GPUs")
def test_gpu_cupy_device1_holds_everything(data: Any) -> None:
    X, y = data
    with nnxp.use_backend("cupy", device=1):
        layers = [Dense(4, 6, activation="relu"), LAYERS["BatchNorm1d"](6),
                  LAYERS["Dropout"](0.2), Dense(6, 3)]
        model = nnxp.Sequential(layers, seed=2)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, optimizer=nnxp.optim.Adam(lr=0.01))
    bad = [path for path, obj in reachable(model) if backend.is_array(obj)
           and int(backend.device_of(obj).id) != 1]
    assert not bad, f"arrays off GPU 1: {bad}"
    out = model.predict_proba(X)
    assert int(out.device.id) == 1
    model.to("cupy", 0)
    assert all(int(backend.device_of(obj).id) == 0 for _, obj in reachable(model)
               if backend.is_array(obj))
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
