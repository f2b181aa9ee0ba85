"""Backend selection: the only module that imports numpy, cupy, torch or array_api_compat.

Every other module receives an array namespace ``xp`` (and a ``device``) from here and writes
its arithmetic once against the Python array API standard.

The active backend is process-global state with three ways to set it:

* ``nnxp.set_backend("torch", device="cpu")``
* ``with nnxp.use_backend("cupy"): ...`` (restores the previous one on exit, exceptions included)
* the ``NNXP_BACKEND`` environment variable, read once at import (``"torch"``,
  ``"torch:cuda"``, ``"array_api_strict:device1"``, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import types
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import array_api_compat
import numpy as np

from .typing import Array

"""Alias for "an array of the active backend" in annotations (the standard has no base class)."""

BACKENDS: tuple[str, ...] = ("numpy", "cupy", "torch", "array_api_strict")
"""Names accepted by :func:`set_backend`."""

_EXTRAS = {
    "numpy": "numpy (a required dependency: reinstall nnxp)",
    "cupy": "nnxp[cuda12] or nnxp[cuda13] (CuPy built for your CUDA major version)",
    "torch": "nnxp[torch] (on a CPU-only machine: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)",
    "array_api_strict": "nnxp[test] (or: pip install array-api-strict)",
}


class BackendError(RuntimeError):
    """A backend cannot be used here: its library is missing or it has no usable device."""


class BackendInfo(NamedTuple):
    """What :func:`get_backend` returns: the backend's name, its array namespace and device."""

    name: str
    xp: Any
    device: Any


# ----------------------------------------------------------------------------------------------
# Resolving names, namespaces and devices
# ----------------------------------------------------------------------------------------------


def _import(module: str, backend: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        raise BackendError(
            f"backend {backend!r} needs the {module.split('.')[0]!r} package, which is not "
            f"installed ({exc}). Install {_EXTRAS[backend]}."
        ) from exc


def _namespace_for(name: str) -> Any:
    if name == "numpy":
        return _import("array_api_compat.numpy", name)
    if name == "cupy":
        cupy = _import("cupy", name)
        return _cupy_namespace(_import("array_api_compat.cupy", name), cupy.cuda.Device)
    if name == "torch":
        _import("torch", name)
        return _import("array_api_compat.torch", name)
    if name == "array_api_strict":
        return _import("array_api_strict", name)
    raise ValueError(f"unknown backend {name!r}; valid names are {', '.join(BACKENDS)}")


_CREATION = ("arange", "empty", "eye", "full", "linspace", "ones", "zeros")
_CREATION_LIKE = ("empty_like", "full_like", "ones_like", "zeros_like")
_cupy_namespaces: dict[int, types.ModuleType] = {}


def _cupy_namespace(base: Any, enter: Any) -> types.ModuleType:
    """array-api-compat's CuPy namespace, with creation functions that honour ``device=``.

    array-api-compat's CuPy ``zeros``, ``ones``, ``full``, ``empty``, ``arange``, ``eye``,
    ``linspace`` and the ``*_like`` functions accept ``device=`` and ignore it: they allocate on
    CuPy's *current* GPU (its ``asarray`` does honour it). Here each runs under
    ``enter(device)`` (``cupy.cuda.Device(device)``) when a device is given, and the ``*_like``
    functions default to their argument's device, as the standard says. Everything else is the
    base namespace's own object. One wrapper per base namespace, so ``xp is xp`` still holds for
    every layer built on the backend; its ``__name__`` is the base's, so array-api-compat and
    nnxp recognise it as CuPy.
    """
    known = _cupy_namespaces.get(id(base))
    if known is not None:
        return known
    ns = types.ModuleType(base.__name__, base.__doc__)
    ns.__dict__.update({k: v for k, v in vars(base).items() if k != "__name__"})

    def on_device(fn: Any, like: bool) -> Any:
        def create(*args: Any, device: Any = None, **kwargs: Any) -> Any:
            if device is None and like:
                device = getattr(args[0], "device", None)
            if device is None:
                return fn(*args, **kwargs)
            with enter(device):
                return fn(*args, device=device, **kwargs)

        create.__name__ = create.__qualname__ = fn.__name__
        create.__doc__ = fn.__doc__
        return create

    for fname in _CREATION + _CREATION_LIKE:
        if hasattr(base, fname):
            setattr(ns, fname, on_device(getattr(base, fname), fname in _CREATION_LIKE))
    _cupy_namespaces[id(base)] = ns
    return ns


def device_scope(xp: Any, device: Any) -> contextlib.AbstractContextManager[Any]:
    """A context in which array operations of ``xp`` run on ``device``.

    CuPy runs every kernel, operators included (``x @ W``), on its *current* GPU, whatever GPU
    the operands live on; ``with device_scope(xp, device):`` makes ``device`` current
    (``cupy.cuda.Device(device)``) and restores the previous one on exit. Other libraries place
    an operation's result with its operands, so this is a no-op context for them. The model's
    entry points (``fit``, ``predict``, ``evaluate``, ``to``, ...) run under it; raw
    ``layer.forward`` calls on a non-current GPU should too.
    """
    if device is not None and _name_of_namespace(xp) == "cupy":
        import cupy  # noqa: PLC0415 - imported lazily: only this module may name it

        return cast(contextlib.AbstractContextManager[Any], cupy.cuda.Device(device))
    return contextlib.nullcontext()


def _check_cupy_device(device: Any) -> Any:
    import cupy  # noqa: PLC0415 - imported lazily: only this module may name it

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing, no GPU, incompatible driver, ...
        raise BackendError(
            "backend 'cupy' is installed but no usable NVIDIA GPU was found "
            f"({type(exc).__name__}: {exc}). Use set_backend('numpy') on this machine, or "
            "check the driver with nvidia-smi."
        ) from None
    if count == 0:
        raise BackendError("backend 'cupy' is installed but CUDA reports 0 GPUs")
    if device is None:
        return cupy.cuda.Device()
    if isinstance(device, int):
        if not 0 <= device < count:
            raise ValueError(f"device={device} is out of range: this machine has {count} GPU(s)")
        return cupy.cuda.Device(device)
    if isinstance(device, str) and device.startswith("cuda"):
        return _check_cupy_device(int(device.split(":")[1]) if ":" in device else None)
    return device


def _resolve_device(name: str, xp: Any, device: Any) -> Any:
    """Turn a user's device spelling ("cuda", 0, "device1", None) into the library's object."""
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"backend 'numpy' has only the 'cpu' device, got device={device!r}")
        return "cpu"
    if name == "cupy":
        return _check_cupy_device(device)
    if name == "torch":
        import torch  # noqa: PLC0415

        dev = torch.device("cpu" if device is None else device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(
                f"device={device!r} asked for CUDA, but this torch build sees no usable GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})"
            )
        return dev
    if name == "array_api_strict":
        if device is None:
            return xp.Device()
        if isinstance(device, str):
            try:
                return xp.Device(device)
            except ValueError:
                raise ValueError(
                    f"array_api_strict has no device {device!r}; valid devices are "
                    "'CPU_DEVICE', 'device1', 'device2'"
                ) from None
        return device
    return device  # a user-supplied namespace: trust the device it was given


def _name_of_namespace(ns: Any) -> str | None:
    mod = getattr(ns, "__name__", "")
    for name in BACKENDS:
        if mod == name or mod == f"array_api_compat.{name}":
            return name
    return None


# ----------------------------------------------------------------------------------------------
# Global state and the public API
# ----------------------------------------------------------------------------------------------

_current: BackendInfo


def _make(name_or_namespace: str | Any, device: Any = None) -> BackendInfo:
    if isinstance(name_or_namespace, str):
        spec = name_or_namespace.strip()
        if ":" in spec and device is None:  # "torch:cuda", "array_api_strict:device1"
            spec, device = spec.split(":", 1)
            if device.isdigit():
                device = int(device)
        name = spec.lower().replace("-", "_")
        if name not in BACKENDS:
            raise ValueError(
                f"unknown backend {name_or_namespace!r}; valid names are {', '.join(BACKENDS)}"
            )
        xp = _namespace_for(name)
        return BackendInfo(name, xp, _resolve_device(name, xp, device))
    ns = name_or_namespace
    known = _name_of_namespace(ns)
    if known is not None:  # numpy, array_api_compat.torch, array_api_strict, ... passed as modules
        return _make(known, device)
    if not hasattr(ns, "asarray") or not hasattr(ns, "matmul"):
        raise TypeError(
            "set_backend expects a backend name or an array-API namespace, got "
            f"{type(ns).__name__} {ns!r}"
        )
    if device is None:
        device = array_api_compat.device(ns.zeros(1))
    return BackendInfo(getattr(ns, "__name__", "custom"), ns, device)


def set_backend(name_or_namespace: str | Any = "numpy", device: Any = None) -> BackendInfo:
    """Make ``name_or_namespace`` the backend for everything created from now on.

    Parameters
    ----------
    name_or_namespace
        ``"numpy"``, ``"cupy"``, ``"torch"`` or ``"array_api_strict"`` (optionally with a device
        after a colon, ``"torch:cuda"``), or an array-API namespace module.
    device
        The device to place new arrays on: ``None`` for the library's default, ``"cuda"``,
        ``"cuda:1"`` or an int for GPUs, ``"device1"`` for array_api_strict.

    Returns
    -------
    BackendInfo
        The previous backend, so that ``set_backend(*old)`` restores it.

    Raises
    ------
    ValueError
        for an unknown name (the message lists the valid ones) or a device the backend lacks.
    BackendError
        when the library is not installed (the message names the pip extra) or has no GPU.
    """
    global _current
    previous = _current
    _current = _make(name_or_namespace, device)
    return previous


def get_backend() -> BackendInfo:
    """The active backend as ``(name, xp, device)``."""
    return _current


@contextlib.contextmanager
def use_backend(name_or_namespace: str | Any, device: Any = None) -> Iterator[BackendInfo]:
    """``with use_backend("torch"):`` — switch backend for a block, restoring it on any exit."""
    global _current
    previous = _current
    _current = _make(name_or_namespace, device)
    try:
        yield _current
    finally:
        _current = previous


def _from_environment() -> BackendInfo:
    spec = os.environ.get("NNXP_BACKEND", "").strip()
    if not spec:
        return _make("numpy")
    try:
        return _make(spec)
    except (ValueError, BackendError) as exc:
        raise type(exc)(f"NNXP_BACKEND={spec!r}: {exc}") from None


_current = _from_environment()


# ----------------------------------------------------------------------------------------------
# Arrays in and out
# ----------------------------------------------------------------------------------------------


def namespace_of(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (they must share one)."""
    return array_api_compat.array_namespace(*arrays)


def device_of(x: Array) -> Any:
    """The device ``x`` lives on."""
    return array_api_compat.device(x)


def backend_name_of(x: Any) -> str:
    """A short name for the library that owns ``x`` (for error messages)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_array_api_strict_namespace(_safe_namespace(x)):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


def _safe_namespace(x: Any) -> Any:
    try:
        return array_api_compat.array_namespace(x)
    except TypeError:
        return None


def is_array(x: Any) -> bool:
    """True for an array of any supported library (numpy, cupy, torch, array_api_strict, ...)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex))


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for any library's float32 dtype object (or a string)."""
    if isinstance(dtype, str):
        return dtype
    text = str(dtype)
    for prefix in ("torch.", "array_api_strict."):
        text = text.replace(prefix, "")
    if text.startswith("<class"):  # numpy scalar types
        return np.dtype(dtype).name
    return np.dtype(text).name if text in np.sctypeDict else text


def resolve_dtype(dtype: Any, xp: Any) -> Any:
    """The dtype of namespace ``xp`` for ``dtype`` given as a string or any library's dtype."""
    name = dtype_name(dtype)
    try:
        return getattr(xp, name)
    except AttributeError:
        raise ValueError(f"dtype={dtype!r} is not a dtype of this backend") from None


def to_numpy(x: Any) -> np.ndarray:
    """Bring an array of any supported backend (or a nested list / scalar) to a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    ns = _safe_namespace(x)
    if ns is not None and array_api_compat.is_array_api_strict_namespace(ns):
        return np.from_dlpack(x.to_device(ns.Device("CPU_DEVICE")))
    if ns is not None and hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
    return np.asarray(x)


def to_float(x: Array) -> float:
    """A 0-d array (on any device) as a Python float."""
    if isinstance(x, (int, float)):
        return float(x)
    return float(to_numpy(x).reshape(()))


def asarray(
    x: Any, dtype: Any = None, *, xp: Any = None, device: Any = None, copy: bool | None = None
) -> Array:
    """Bring ``x`` onto a backend and device (by default the active ones).

    ``x`` may be a NumPy, CuPy, torch or array_api_strict array, a nested list, a scalar, or a
    table with a ``to_numpy()`` method (a pandas DataFrame or Series; pandas is never imported).
    Arrays already on the target namespace and device are returned as they are (no copy) unless a
    ``dtype`` conversion or ``copy=True`` is asked for. Arrays from another library cross by
    DLPack where both ends allow it, and through host memory otherwise (e.g. GPU to CPU).
    """
    if xp is None:
        info = _current
        xp, device = info.xp, info.device if device is None else device
    elif device is None:
        device = _default_device(xp)
    target_dtype = None if dtype is None else resolve_dtype(dtype, xp)
    if getattr(x, "requires_grad", False) and array_api_compat.is_torch_array(x):
        # data, not a graph: computing on it would drag torch's autograd into every update
        # (the weights would start requiring grad) and grow the caller's graph each step
        x = x.detach()
    ns = _safe_namespace(x) if is_array(x) else None
    if ns is not None and _same_namespace(ns, xp):
        out = x if _same_device(device_of(x), device) else xp.asarray(x, device=device)
    elif ns is not None and not isinstance(x, np.ndarray):
        out = _from_foreign(x, xp, device)
    else:  # host data: cast here, so that one transfer carries the target dtype
        host = x if isinstance(x, np.ndarray) else _host_data(x)
        if target_dtype is not None:
            host = host.astype(dtype_name(target_dtype), copy=False)
        out = _from_numpy(host, xp, device)
    if target_dtype is not None and out.dtype != target_dtype:
        out = xp.astype(out, target_dtype)
    elif copy:
        out = xp.asarray(out, copy=True)
    return out


def _host_data(x: Any) -> np.ndarray:
    """Nested lists, scalars or a table with ``to_numpy()`` (pandas, duck-typed) as NumPy."""
    to_host = getattr(x, "to_numpy", None)
    try:
        host = np.asarray(to_host() if callable(to_host) else x)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"cannot convert {type(x).__name__} to an array: the nested "
                         f"sequences have different lengths ({exc})") from None
    if host.dtype == object:
        raise TypeError(f"cannot convert {type(x).__name__} with ragged or object entries")
    return host


def cast_host_data(x: Any, dtype: Any) -> Any:
    """Host data of real numbers or booleans as a NumPy array of ``dtype``, cast on the host.

    For data on its way to a device (``fit``/``predict`` inputs): casting before the transfer
    moves ``dtype``'s bytes once — half of float64's for a float32 model — and allocates no
    float64 copy on the device. ``x`` may be a NumPy array, nested lists, a scalar or a table
    with ``to_numpy()``. Anything else is returned as it is, for the caller's checks to judge:
    arrays of other libraries (already on a device, cast where they live), data that NumPy
    cannot read or whose dtype is not real or bool (complex, strings, objects). Values that
    overflow ``dtype`` become ±inf silently; the callers' finiteness checks report them.
    """
    if is_array(x) and not isinstance(x, np.ndarray):
        return x
    try:
        host = x if isinstance(x, np.ndarray) else _host_data(x)
    except (TypeError, ValueError):
        return x
    if host.dtype.kind not in "biuf":
        return x
    target = dtype_name(dtype)
    if host.dtype == np.dtype(target):
        return host
    with np.errstate(over="ignore"):
        return host.astype(target)


def _default_device(xp: Any) -> Any:
    if xp is _current.xp:
        return _current.device
    return device_of(xp.zeros(1))


def _same_namespace(a: Any, b: Any) -> bool:
    return a is b or getattr(a, "__name__", 1) == getattr(b, "__name__", 2)


def _same_device(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def _from_numpy(host: np.ndarray, xp: Any, device: Any) -> Array:
    name = _name_of_namespace(xp)
    if name == "numpy":
        return host
    if name == "torch":
        import torch  # noqa: PLC0415

        t = torch.from_numpy(np.ascontiguousarray(host))
        return t if str(device) == "cpu" else t.to(device)
    if name == "cupy":
        import cupy  # noqa: PLC0415

        with device:
            return cupy.asarray(host)
    return xp.asarray(host, device=device)


def _from_foreign(x: Any, xp: Any, device: Any) -> Array:
    """A different library's array onto ``xp``/``device``: DLPack when it works, else via host.

    NumPy arrays always take the host route: ``_from_numpy`` makes them contiguous first, which
    DLPack importers need (torch aborts the process on a negative-stride view such as ``a[::-1]``).
    """
    if isinstance(x, np.ndarray):
        return _from_numpy(x, xp, device)
    if hasattr(xp, "from_dlpack") and hasattr(x, "__dlpack__"):
        try:
            out = xp.from_dlpack(x)
            if _same_device(device_of(out), device):
                return out
            return xp.asarray(out, device=device)
        except (BufferError, RuntimeError, TypeError, ValueError, AttributeError):
            pass  # cross-device or unsupported: go through the host below
    return _from_numpy(to_numpy(x), xp, device)


# ----------------------------------------------------------------------------------------------
# Capabilities the kernels ask about
# ----------------------------------------------------------------------------------------------


def supports_inplace(xp: Any) -> bool:
    """Whether ``xp``'s arrays may be updated in place (``a[...] = b``, ``a -= b``).

    True for numpy, cupy and torch (whose arrays are mutable buffers); False for other
    namespaces, where the safe functional form is used.
    """
    return _name_of_namespace(xp) in ("numpy", "cupy", "torch")


def synchronize(device: Any = None) -> None:
    """Wait for the GPU work queued on ``device`` (by default the active backend's device, e.g.
    GPU 1 after ``set_backend("cupy", device=1)``, not CuPy's current GPU); a no-op on CPU
    backends. Timers and benchmarks call it; pass ``model.device`` for a model on another GPU."""
    name = _current.name
    dev = device if device is not None else _current.device
    if name == "cupy":
        import cupy  # noqa: PLC0415

        with cupy.cuda.Device(dev):  # each GPU has its own current stream: wait on dev's
            cupy.cuda.get_current_stream().synchronize()
    elif name == "torch":
        import torch  # noqa: PLC0415

        if getattr(dev, "type", str(dev)) == "cuda":
            torch.cuda.synchronize(dev)


def device_memory(*, reset_peak: bool = False) -> dict[str, int] | None:
    """Allocator statistics of the active GPU backend, for peak-memory benchmarks.

    Returns ``{"current": bytes in use, "peak": high-water mark}``, or ``None`` on CPU backends
    (there, NumPy reports its allocations to :mod:`tracemalloc`; torch CPU has no counter).

    * torch CUDA: ``memory_allocated`` / ``max_memory_allocated``; ``reset_peak`` calls
      ``reset_peak_memory_stats``.
    * cupy: the default memory pool's ``used_bytes`` / ``total_bytes``. The pool keeps freed
      blocks, so after ``reset_peak`` (which returns the free blocks to the driver with
      ``free_all_blocks``) its total size is the high-water mark of what was in use, rounded up
      to the pool's block sizes: an upper bound.
    """
    name = _current.name
    if name == "cupy":
        import cupy  # noqa: PLC0415

        pool = cupy.get_default_memory_pool()
        with cupy.cuda.Device(_current.device):  # the pool reports on the current GPU
            if reset_peak:
                pool.free_all_blocks()
            return {"current": int(pool.used_bytes()), "peak": int(pool.total_bytes())}
    if name == "torch" and getattr(_current.device, "type", None) == "cuda":
        import torch  # noqa: PLC0415

        dev = _current.device
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(dev)
        return {"current": int(torch.cuda.memory_allocated(dev)),
                "peak": int(torch.cuda.max_memory_allocated(dev))}
    return None


def isfinite_all(x: Array, xp: Any) -> bool:
    """Whether every entry of ``x`` is finite (one device-to-host transfer)."""
    return bool(to_numpy(xp.all(xp.isfinite(x))))


# ----------------------------------------------------------------------------------------------
# Files: the NPZ container of nnxp.io (NumPy's own format, never pickle)
# ----------------------------------------------------------------------------------------------


def save_npz(file: Any, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` (name → array of any backend) into the open binary ``file`` as NPZ.

    Uncompressed ``numpy.savez``; every array is brought to the host first. Object arrays are
    refused, so the file never holds pickled data.
    """
    host = {name: to_numpy(a) for name, a in arrays.items()}
    for name, a in host.items():
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object, which NPZ can store only by "
                            "pickling; nnxp never writes pickles")
    np.savez(file, **cast(dict[str, Any], host))


def load_npz(path: Any) -> dict[str, np.ndarray]:
    """Every array of the NPZ file ``path`` as host NumPy arrays, read with ``allow_pickle=False``.

    Raises
    ------
    ValueError
        when ``path`` is not an NPZ archive (a pickle, a bare ``.npy``, a truncated or corrupt
        file) or holds an object array; the message says which.
    """
    import zipfile  # noqa: PLC0415 - only needed here

    with open(path, "rb") as file:  # our own handle: closed even when numpy gives up midway
        head = file.read(6)
        file.seek(0)
        if not head.startswith((b"PK", b"\x93NUMPY")):  # NumPy would try to unpickle it
            what = f"it begins with {head!r}" if head else "it is empty"
            raise ValueError(f"{path} is not an NPZ archive (a zip file): {what}")
        try:
            archive = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not an NPZ archive that can be read without pickle: "
                             f"{exc}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single .npy array, not an NPZ archive")
        try:
            with archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{path} is a truncated or corrupt NPZ archive "
                             f"({type(exc).__name__}: {exc})") from None


def host_namespace() -> Any:
    """The array-API namespace of host arrays (array-api-compat's NumPy), whatever is active.

    For computations that must give the same bits on every backend (e.g. the QR of the
    orthogonal initialiser): do them here, then move the result once with :func:`asarray`.
    """
    return _namespace_for("numpy")


def host_scalar(x: Any) -> Any:
    """A NumPy scalar (``np.float64(1.5)``) as the Python number it holds; anything else as is."""
    if isinstance(x, np.generic):
        return x.item()
    return x


def host_array(x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` (nested lists, scalars, any backend's array) as a host NumPy array of ``dtype``."""
    out = to_numpy(x)
    return out if dtype is None else out.astype(dtype_name(dtype), copy=False)
