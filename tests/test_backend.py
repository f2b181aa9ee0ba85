"""The backend flag: set/use/get, NNXP_BACKEND, errors a user can act on, data in and out."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest

import nnxp
from nnxp import backend

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = nnxp.get_backend()
    yield
    nnxp.set_backend(previous.xp, previous.device)


def test_default_backend_is_numpy() -> None:
    info = nnxp.get_backend()
    assert info.name == "numpy" and info.device == "cpu"
    assert info.xp.__name__ == "array_api_compat.numpy"


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"] + (["torch"] if HAS_TORCH else []))
def test_set_backend_by_name(name: str) -> None:
    nnxp.set_backend(name)
    info = nnxp.get_backend()
    assert info.name == name
    assert tuple(info) == (info.name, info.xp, info.device)


def test_set_backend_returns_previous_and_accepts_namespaces() -> None:
    import array_api_strict

    previous = nnxp.set_backend(array_api_strict, device="device1")
    assert previous.name == "numpy"
    assert nnxp.get_backend().name == "array_api_strict"
    assert str(nnxp.get_backend().device) == str(array_api_strict.Device("device1"))
    nnxp.set_backend(np)  # the plain numpy module maps to the compat namespace
    assert nnxp.get_backend().xp.__name__ == "array_api_compat.numpy"


def test_name_with_device_suffix() -> None:
    nnxp.set_backend("array_api_strict:device1")
    assert "device1" in str(nnxp.get_backend().device)


def test_use_backend_restores_on_exit_and_on_exception() -> None:
    with nnxp.use_backend("array_api_strict") as info:
        assert info.name == "array_api_strict" == nnxp.get_backend().name
    assert nnxp.get_backend().name == "numpy"
    with pytest.raises(RuntimeError, match="boom"):
        with nnxp.use_backend("array_api_strict"):
            raise RuntimeError("boom")
    assert nnxp.get_backend().name == "numpy"


def test_use_backend_nests() -> None:
    with nnxp.use_backend("array_api_strict"):
        with nnxp.use_backend("numpy"):
            assert nnxp.get_backend().name == "numpy"
        assert nnxp.get_backend().name == "array_api_strict"


@pytest.mark.parametrize("bad", ["tensorflow", "nump", ""])
def test_unknown_name_lists_valid_names(bad: str) -> None:
    with pytest.raises(ValueError, match="valid names are numpy, cupy, torch, array_api_strict"):
        nnxp.set_backend(bad)
    assert nnxp.get_backend().name == "numpy"  # a failed switch changes nothing


def test_not_a_namespace_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="backend name or an array-API namespace"):
        nnxp.set_backend(42)


def test_bad_device_is_explained() -> None:
    with pytest.raises(ValueError, match="only the 'cpu' device"):
        nnxp.set_backend("numpy", device="cuda")
    with pytest.raises(ValueError, match="array_api_strict has no device 'gpu7'"):
        nnxp.set_backend("array_api_strict", device="gpu7")


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = backend.importlib.import_module

    def fake_import(name: str, *args, **kwargs):
        if name.split(".")[0] == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(backend.importlib, "import_module", fake_import)
    with pytest.raises(nnxp.BackendError, match=r"nnxp\[cuda12\] or nnxp\[cuda13\]"):
        nnxp.set_backend("cupy")


def test_cupy_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy installed but CUDA unusable: a BackendError, not a CUDA traceback."""
    import types

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(nnxp.BackendError,
                       match=r"cannot use a GPU: no device \(RuntimeError: cudaErrorNoDevice"):
        backend._check_cupy_device(None)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_cuda_without_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(nnxp.BackendError, match="asked for CUDA, but torch .* cannot use it"):
        nnxp.set_backend("torch", device="cuda")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("array_api_strict", "array_api_strict"), ("numpy", "numpy"), ("", "numpy")]
    + ([("torch", "torch")] if HAS_TORCH else []),
)
def test_environment_variable_sets_the_default(value: str, expected: str) -> None:
    code = "import nnxp; print(nnxp.get_backend().name)"
    env = {"NNXP_BACKEND": value, "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def test_bad_environment_variable_fails_loudly() -> None:
    out = subprocess.run([sys.executable, "-c", "import nnxp"], env={"NNXP_BACKEND": "tpu"},
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "NNXP_BACKEND='tpu'" in out.stderr and "valid names are" in out.stderr


# --- data in and out -------------------------------------------------------------------------


def _sources() -> list:
    import array_api_strict

    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = [host, host.tolist(),
           array_api_strict.asarray(host, device=array_api_strict.Device("device1"))]
    if HAS_TORCH:
        import torch

        out.append(torch.from_numpy(host.copy()))
    return out


@pytest.mark.parametrize("source", _sources(), ids=lambda s: type(s).__module__.split(".")[0])
def test_asarray_and_to_numpy_round_trip_on_every_backend(bk, source) -> None:
    x = nnxp.asarray(source)
    assert backend.namespace_of(x) is bk.xp or backend.namespace_of(x).__name__ == bk.xp.__name__
    assert str(backend.device_of(x)) == str(bk.device)
    np.testing.assert_array_equal(nnxp.to_numpy(x), np.arange(6).reshape(2, 3))


def test_asarray_dtype_and_copy(bk) -> None:
    x = nnxp.asarray([[1, 2], [3, 4]], dtype="float64")
    assert x.dtype == bk.xp.float64
    y = nnxp.asarray(x)
    assert y is x  # already on the backend and device: no copy
    z = nnxp.asarray(x, dtype="float32")
    assert z.dtype == bk.xp.float32


def test_asarray_rejects_ragged_lists() -> None:
    with pytest.raises((TypeError, ValueError)):
        nnxp.asarray([[1.0, 2.0], [3.0]])


def test_to_numpy_accepts_scalars_and_lists() -> None:
    np.testing.assert_array_equal(nnxp.to_numpy([1, 2]), [1, 2])
    assert nnxp.backend.to_float(nnxp.asarray(2.5)) == 2.5


def test_supports_inplace() -> None:
    import array_api_strict

    assert backend.supports_inplace(nnxp.get_backend().xp)
    assert not backend.supports_inplace(array_api_strict)


def test_dtype_names_are_library_independent(bk) -> None:
    assert backend.dtype_name(bk.xp.float32) == "float32"
    assert backend.resolve_dtype("float64", bk.xp) == bk.xp.float64
    with pytest.raises(ValueError, match="not a dtype"):
        backend.resolve_dtype("float8", bk.xp)


def test_asarray_accepts_non_contiguous_numpy_views(bk) -> None:
    """Reversed and strided views (negative strides) cross to every backend intact."""
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    for view in (host[::-1], host[:, ::2], host.T):
        np.testing.assert_array_equal(nnxp.to_numpy(nnxp.asarray(view)), view)


# --- nnxp's NumPy namespace: the reductions that skip NumPy's Python wrapper -----------------

_REDUCTION_DTYPES = ["float32", "float64", "float16", "int8", "int32", "int64", "uint8", "bool",
                     "complex64"]


def _same(a: object, b: object) -> bool:
    """Same type, dtype, shape and bytes (NaN payloads included)."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    return (type(a) is type(b) and a_arr.dtype == b_arr.dtype and a_arr.shape == b_arr.shape
            and a_arr.tobytes() == b_arr.tobytes())


@pytest.mark.parametrize("dtype", _REDUCTION_DTYPES)
def test_numpy_namespace_reductions_are_numpys_own(dtype: str) -> None:
    """nnxp's sum/max/min on NumPy give what array-api-compat's (NumPy's own) give, bit for bit:
    the same values, dtype, shape and type (a 0-d result stays a NumPy scalar), over axes,
    keepdims and dtype=, NaN and infinities included."""
    import array_api_compat.numpy as compat

    xp = backend.get_backend().xp
    assert xp is not compat and xp.__name__ == compat.__name__
    assert backend.namespace_name(xp) == "numpy" and backend.namespace_of(np.ones(2)) is xp
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((7, 5, 3)) * 50).astype(dtype)
    if np.dtype(dtype).kind in "fc":
        x[0, 0, 0], x[1, 2, 0], x[3, 1, 2] = np.nan, np.inf, -np.inf
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf + (-inf), overflow, complex to int: both warn alike
        _compare_reductions(xp, compat, x)


def _compare_reductions(xp: object, compat: object, x: np.ndarray) -> None:
    for name in ("sum", "max", "min"):
        for axis in (None, 0, 1, -1, (0, 2), (0, 1, 2)):
            for keepdims in (None, False, True):
                kw: dict[str, object] = {"axis": axis}
                if keepdims is not None:
                    kw["keepdims"] = keepdims
                assert _same(getattr(xp, name)(x, **kw),
                             getattr(compat, name)(x, **kw)), (name, axis, keepdims)
                assert _same(getattr(xp, name)(x[::2, 1:], **kw),
                             getattr(compat, name)(x[::2, 1:], **kw)), (name, axis, "strided")
    for out_dtype in ("float64", "int64", None):
        assert _same(xp.sum(x, axis=1, dtype=out_dtype),  # type: ignore[attr-defined]
                     compat.sum(x, axis=1, dtype=out_dtype))  # type: ignore[attr-defined]
    assert _same(xp.sum(x[0, 0, 0]), compat.sum(x[0, 0, 0]))  # type: ignore[attr-defined]



def test_numpy_namespace_astype_is_array_api_compats() -> None:
    """nnxp's astype on NumPy: the same array, dtype, and copy-or-not as array-api-compat's,
    for every pair of dtypes and copy=True/False; a device or a subclass goes to compat's."""
    import array_api_compat.numpy as compat

    xp = backend.get_backend().xp
    assert xp.astype is not compat.astype
    x = np.array([[0.0, -1.5, 2.5], [np.nan, np.inf, 3.0]])
    for src in ("float32", "float64", "int32", "int64", "bool"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = x.astype(src)
            for dst in ("float32", "float64", "int32", "int64", "bool"):
                for copy in (True, False):
                    mine = xp.astype(a, getattr(np, dst), copy=copy)
                    theirs = compat.astype(a, getattr(np, dst), copy=copy)
                    assert _same(mine, theirs), (src, dst, copy)
                    assert (mine is a) == (theirs is a), (src, dst, copy)
    assert _same(xp.astype(x, np.float32, device="cpu"), compat.astype(x, np.float32))
    with pytest.raises(ValueError):
        xp.astype(x, np.float32, device="gpu")
    m = x.view(np.matrix) if x.ndim == 2 else x
    assert type(xp.astype(m, np.float32)) is type(compat.astype(m, np.float32))


def test_numpy_namespace_reductions_defer_for_other_inputs() -> None:
    """Subclasses, lists, positional and other arguments, empty arrays: NumPy's function with
    the arguments as given (the same result or the same error)."""
    import array_api_compat.numpy as compat

    xp = backend.get_backend().xp
    x = np.arange(12.0).reshape(3, 4)
    seen: list[dict[str, object]] = []

    class Recording(np.ndarray):  # a subclass: NumPy calls its own method
        def sum(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            seen.append(kwargs)
            return super().sum(*args, **kwargs)

    r = x.view(Recording)
    assert _same(xp.sum(r, axis=0), compat.sum(r, axis=0))
    assert seen[0] == seen[1] and "keepdims" not in seen[0]  # not passed when not given
    assert _same(xp.max(r, axis=1, keepdims=True), compat.max(r, axis=1, keepdims=True))
    assert _same(xp.sum([[1, 2], [3, 4]], axis=0), compat.sum([[1, 2], [3, 4]], axis=0))
    assert _same(xp.sum(x, 1), compat.sum(x, 1))  # axis by position
    out = np.empty(4)
    assert xp.sum(x, axis=0, out=out) is out and _same(out, compat.sum(x, axis=0))
    assert _same(xp.max(x, axis=0, initial=7.0), compat.max(x, axis=0, initial=7.0))
    assert _same(xp.min(x, axis=None, where=x > 3, initial=100.0),
                 compat.min(x, axis=None, where=x > 3, initial=100.0))
    with pytest.raises(ValueError, match="zero-size"):
        xp.max(np.empty((0, 3)), axis=0)
    assert _same(xp.sum(np.empty((0, 3), np.float32), axis=0),
                 compat.sum(np.empty((0, 3), np.float32), axis=0))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_out_writer_matches_the_namespace(dtype: str) -> None:
    """The dense layer's gradient writer (numpy): ``sum0`` and ``matmul`` into a given array
    are ``sum(x, axis=0)`` and ``a @ b`` bit for bit, on plain and strided arrays."""
    xp = backend.get_backend().xp
    writer = backend.out_writer(xp)
    assert writer is not None
    rng = np.random.default_rng(3)
    x = rng.standard_normal((33, 17)).astype(dtype)
    for arr in (x, x[::2], x.T[:, :9].T):
        out = np.empty(arr.shape[1], dtype)
        assert writer.sum0(arr, out=out) is out and _same(out, xp.sum(arr, axis=0))
    w = rng.standard_normal((17, 5)).astype(dtype)
    out = np.empty((33, 5), dtype)
    assert writer.matmul(x, w, out) is out and _same(out, x @ w)


@pytest.mark.parametrize("name", ["numpy"] + (["torch"] if HAS_TORCH else []))
def test_zero_unless_zeroes_only_behind_a_shut_gate(name: str) -> None:
    """The gated gradient of the flat buffers: untouched (NaN and -0.0 included) while the
    gate is open, +0.0 everywhere once it is shut; the same on every library."""
    with nnxp.use_backend(name) as info:
        xp = info.xp
        zero = backend.zero_unless(xp)
        assert zero is not None
        host = np.array([1.5, -0.0, np.nan, np.inf, -3.0], dtype=np.float32)
        for flag in (True, False):
            g = backend.asarray(host.copy(), xp=xp)
            gate = xp.asarray(flag)
            for gate_value in (gate, xp.logical_and(gate, gate)):  # 0-d arrays, as gates are
                zero(g, gate_value)
            expected = host if flag else np.zeros_like(host)
            assert backend.to_numpy(g).tobytes() == expected.tobytes()


def test_row_taker_takes_the_rows_take_takes(bk) -> None:
    xp = bk.xp
    x = nnxp.asarray(np.arange(30, dtype=np.float32).reshape(10, 3))
    labels = nnxp.asarray(np.arange(10) % 4)
    idx = nnxp.asarray(np.array([7, 0, 9, 3, 3]))
    take = backend.row_taker(xp)
    assert take is backend.row_taker(xp)  # made once per namespace
    for a in (x, labels):
        got, want = take(a, idx), xp.take(a, idx, axis=0)
        assert got.dtype == want.dtype and backend.device_of(got) == backend.device_of(want)
        np.testing.assert_array_equal(nnxp.to_numpy(got), nnxp.to_numpy(want))
        out = xp.zeros(tuple(want.shape), dtype=want.dtype, device=backend.device_of(a))
        assert take(a, idx, out=out) is out  # written into the given array
        np.testing.assert_array_equal(nnxp.to_numpy(out), nnxp.to_numpy(want))


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_row_taker_on_torch_is_one_index_select() -> None:
    import torch  # noqa: PLC0415
    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x, idx = torch.arange(12.0).reshape(4, 3), torch.tensor([2, 0])
    xp = backend.namespace_of(x)
    with Ops() as ops:
        backend.row_taker(xp)(x, idx)
    assert ops.names == ["index_select"]
    with Ops() as ops:  # array-api-compat's take maps negative indices first
        xp.take(x, idx, axis=0)
    assert len(ops.names) > 1


def test_is_array_asks_per_object_where_the_type_does_not_decide() -> None:
    """An object may carry ``__array_namespace__`` as an instance attribute, and a Mock makes
    a class per object: such answers are not kept per type (nor do they fill a cache)."""
    from unittest import mock  # noqa: PLC0415

    class Holder:
        pass

    plain, tagged = Holder(), Holder()
    tagged.__array_namespace__ = lambda api_version=None: np  # type: ignore[attr-defined]
    for first, second in ((plain, tagged), (tagged, plain)):
        assert not backend.is_array(first) if first is plain else backend.is_array(first)
        assert backend.is_array(second) if second is tagged else not backend.is_array(second)
    before = len(backend._IS_ARRAY_TYPE)  # noqa: SLF001 - the cache's size
    for _ in range(50):
        backend.is_array(mock.Mock())
    assert len(backend._IS_ARRAY_TYPE) == before  # noqa: SLF001
    # the libraries' and Python's own types: answered by the type, as before
    assert backend.is_array(np.zeros(3)) and backend.is_array(np.float32(1.0))
    assert not backend.is_array(np.float64(1.0)) and not backend.is_array(3)
    assert not backend.is_array([1.0]) and not backend.is_array(None)
