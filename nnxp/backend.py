"""Backend selection: the only module that imports numpy, cupy, torch or array_api_compat.

Every other module receives an array namespace ``xp`` (and a ``device``) from here and writes
its arithmetic once against the Python array API standard.

The active backend has three ways to be set:

* ``nnxp.set_backend("torch", device="cpu")`` sets the process-wide default (and, inside a
  ``use_backend`` block, the block's backend too, until the block exits);
* ``with nnxp.use_backend("cupy"): ...`` switches it for the block in *this thread or asyncio
  task only* (a :class:`contextvars.ContextVar`), restoring it on exit, exceptions included;
* the ``NNXP_BACKEND`` environment variable, read once at import (``"torch"``,
  ``"torch:cuda"``, ``"array_api_strict:device1"``, ...), gives the first default.

A new thread starts from the process-wide default; an asyncio task starts from the backend of
the code that created it. The first import of a backend's library happens under a lock, so two
threads resolving ``"torch"`` at once never see a partially initialised module.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import array_api_compat
import numpy as np

from .typing import Array

"""Alias for "an array of the active backend" in annotations (the standard has no base class)."""

_tf32: bool | None = None
"""The TF32 matmul mode (:func:`set_tf32`); None: never configured, the libraries' defaults
(off) stay untouched. Set from ``NNXP_TF32`` further down, before the first backend is made."""

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
        top = module.split(".")[0]
        if _installed(top) and f"No module named '{top}'" not in str(exc):
            # installed, but its import failed (a CUDA library it links against is missing)
            raise BackendError(_cuda_failure_sentence(
                f"backend {backend!r}: the {top!r} package is installed but "
                "cannot be imported", exc)) from None
        raise BackendError(
            f"backend {backend!r} needs the {module.split('.')[0]!r} package, which is not "
            f"installed ({exc}). Install {_EXTRAS[backend]}."
        ) from exc


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


_IMPORT_LOCK = threading.RLock()
"""Held while a backend's namespace is resolved: first imports of torch/cupy run one at a time
(an import racing another thread's first import of torch can see a partially initialised
module)."""


def _namespace_for(name: str) -> Any:
    with _IMPORT_LOCK:
        return _namespace_for_locked(name)


def _namespace_for_locked(name: str) -> Any:
    if name == "numpy":
        return _numpy_namespace(_import("array_api_compat.numpy", name))
    if name == "cupy":
        cupy = _import("cupy", name)
        return _cupy_namespace(_import("array_api_compat.cupy", name), cupy.cuda.Device)
    if name == "torch":
        _import("torch", name)
        return _import("array_api_compat.torch", name)
    if name == "array_api_strict":
        return _import("array_api_strict", name)
    raise ValueError(f"unknown backend {name!r}; valid names are {', '.join(BACKENDS)}")


_UNSET: Any = object()
"""Marks a ``keepdims`` the caller did not pass (NumPy's own reductions tell "not given" apart
from ``False`` when they defer to an array's method)."""

_numpy_namespaces: dict[int, types.ModuleType] = {}


def _numpy_namespace(base: Any) -> types.ModuleType:
    """array-api-compat's NumPy namespace, with ``sum``, ``max`` and ``min`` that skip NumPy's
    Python wrapper for a plain ``ndarray``.

    array-api-compat's NumPy ``sum``/``max``/``min`` are NumPy's own ``np.sum``/``np.max``/
    ``np.min``. For an argument whose type is exactly ``np.ndarray`` those are a Python wrapper
    (``numpy/_core/fromnumeric.py``: ``_wrapreduction`` drops the options not given, tests the
    type, then calls ``ufunc.reduce(x, axis, dtype, out, **given)``) around the ufunc's
    ``reduce``: about 1.5 µs per call on NumPy 2.x, against 2 µs for the reduction of a
    (32, 128) float32 array itself, and a small MLP's training step makes six of them.
    Here a plain ``ndarray`` called with the standard's arguments (``axis``, ``keepdims``, and
    ``dtype`` for ``sum``) goes straight to that same ``reduce`` call — the same function with
    the same arguments, hence the same array, dtype and bits (``tests/test_backend.py``
    compares them over dtypes, axes and ``keepdims``). Anything else (another argument, an
    ``ndarray`` subclass such as a memory map, a list) goes to NumPy's function unchanged.

    Only functions that *are* NumPy's own are replaced (an array-api-compat that wraps them in
    a later version keeps its wrapper). Everything else is the base namespace's own object; the
    module's ``__name__`` is the base's, so array-api-compat and :func:`namespace_name` see
    NumPy, and :func:`namespace_of` returns this module for NumPy arrays, so ``xp is xp`` holds
    between a model's namespace and that of its arrays.
    """
    known = _numpy_namespaces.get(id(base))
    if known is not None:
        return known
    ns = types.ModuleType(base.__name__, base.__doc__)
    ns.__dict__.update({k: v for k, v in vars(base).items() if k != "__name__"})
    ndarray = np.ndarray
    if base.sum is np.sum:
        generic_sum, add = np.sum, cast(Any, np.add.reduce)

        def sum(x: Any, /, *args: Any, axis: Any = None, dtype: Any = None,  # noqa: A001
                keepdims: Any = _UNSET, **kwargs: Any) -> Any:
            if type(x) is ndarray and not args and not kwargs:
                return add(x, axis, dtype, None, False if keepdims is _UNSET else keepdims)
            return generic_sum(x, *args, **_given(kwargs, axis=axis, dtype=dtype,
                                                  keepdims=keepdims))

        sum.__doc__ = np.sum.__doc__
        ns.__dict__["sum"] = sum
    for name, ufunc in (("max", np.maximum), ("min", np.minimum)):
        if getattr(base, name) is getattr(np, name):
            ns.__dict__[name] = _direct_extremum(getattr(np, name), ufunc.reduce, name)
    if getattr(base.astype, "__module__", None) == "array_api_compat.numpy._aliases":
        ns.__dict__["astype"] = _direct_astype(base.astype)
    _numpy_namespaces[id(base)] = ns
    return ns


def _direct_astype(generic: Any) -> Any:
    """``astype`` of :func:`_numpy_namespace`: array-api-compat's NumPy ``astype`` checks that
    ``device`` is None or "cpu" and then returns ``x.astype(dtype=dtype, copy=copy)``; for a
    plain ``ndarray`` without a device that call is made directly (about 1 µs less; a small
    MLP's step makes two). Anything else goes to array-api-compat's function."""
    ndarray = np.ndarray

    def astype(x: Any, dtype: Any, /, *, copy: bool = True, device: Any = None) -> Any:
        if device is None and type(x) is ndarray:
            return x.astype(dtype, copy=copy)
        return generic(x, dtype, copy=copy, device=device)

    astype.__doc__ = generic.__doc__
    return astype


def _given(kwargs: dict[str, Any], **named: Any) -> dict[str, Any]:
    """``kwargs`` plus the named arguments the caller gave (not None, not :data:`_UNSET`), so
    that NumPy's function receives exactly the arguments of the call (``xp.sum(x, 0)`` passes
    its axis by position)."""
    kwargs.update({k: v for k, v in named.items() if v is not None and v is not _UNSET})
    return kwargs


def _direct_extremum(generic: Any, reduce: Any, name: str) -> Any:
    """``max``/``min`` of :func:`_numpy_namespace`: ``reduce(x, axis, None, None, keepdims)``
    for a plain ``ndarray``, what ``np.max``/``np.min`` call for one; NumPy's function else."""
    ndarray = np.ndarray

    def extremum(x: Any, /, *args: Any, axis: Any = None, keepdims: Any = _UNSET,
                 **kwargs: Any) -> Any:
        if type(x) is ndarray and not args and not kwargs:
            return reduce(x, axis, None, None, False if keepdims is _UNSET else keepdims)
        return generic(x, *args, **_given(kwargs, axis=axis, keepdims=keepdims))

    extremum.__name__ = extremum.__qualname__ = name
    extremum.__doc__ = generic.__doc__
    return extremum


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
            _cuda_failure_sentence("backend 'cupy' is installed but cannot use a GPU", exc)
            + " `nnxp doctor` checks every backend; set_backend('numpy') works everywhere."
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
            what = f"device={device!r} asked for CUDA, but torch {torch.__version__} cannot use it"
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                raise BackendError(f"{what}: it is a CPU-only build. Install a CUDA build of "
                                   "torch (docs/backends.md); `nnxp doctor` checks every backend.")
            try:
                torch.cuda.init()  # raises with the cause where is_available() says False
                cause: BaseException = RuntimeError("torch.cuda.device_count() is 0")
            except Exception as exc:  # noqa: BLE001 - explained below
                cause = exc
            raise BackendError(_cuda_failure_sentence(what, cause)) from None
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

_default: BackendInfo
"""The process-wide default: what a thread or task sees outside any ``use_backend`` block."""

_scoped: contextvars.ContextVar[BackendInfo | None] = contextvars.ContextVar(
    "nnxp_backend", default=None)
"""The backend of the innermost ``use_backend`` block of this thread / asyncio task, if any."""


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
        if name in ("torch", "cupy") and _tf32 is not None:  # nnxp.set_tf32 / NNXP_TF32
            _apply_tf32(_tf32, name)
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
        The previous backend (what this thread saw), so that ``set_backend(old.xp, old.device)``
        restores it.

    Raises
    ------
    ValueError
        for an unknown name (the message lists the valid ones) or a device the backend lacks.
    BackendError
        when the library is not installed (the message names the pip extra) or has no GPU.
    """
    global _default
    new = _make(name_or_namespace, device)
    previous = get_backend()
    _default = new
    if _scoped.get() is not None:  # inside a use_backend block: this block sees it too
        _scoped.set(new)
    return previous


def get_backend() -> BackendInfo:
    """The active backend as ``(name, xp, device)``: that of the innermost ``use_backend`` block
    of this thread or asyncio task, else the process-wide default."""
    scoped = _scoped.get()
    return _default if scoped is None else scoped


@contextlib.contextmanager
def use_backend(name_or_namespace: str | Any, device: Any = None) -> Iterator[BackendInfo]:
    """``with use_backend("torch"):`` — switch backend for a block, restoring it on any exit.

    The switch is local to the current thread or asyncio task (a context variable): another
    thread, or a task not created inside the block, keeps its own backend meanwhile. A task
    created inside the block inherits it (asyncio copies the context when a task is created).
    """
    info = _make(name_or_namespace, device)
    token = _scoped.set(info)
    try:
        yield info
    finally:
        _scoped.reset(token)


def _from_environment() -> BackendInfo:
    spec = os.environ.get("NNXP_BACKEND", "").strip()
    if not spec:
        return _make("numpy")
    try:
        return _make(spec)
    except (ValueError, BackendError) as exc:
        raise type(exc)(f"NNXP_BACKEND={spec!r}: {exc}") from None


_default = _from_environment()


# ----------------------------------------------------------------------------------------------
# Arrays in and out
# ----------------------------------------------------------------------------------------------


def namespace_of(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (they must share one): the one :func:`set_backend`
    gives for their library (for NumPy arrays, nnxp's NumPy namespace, see
    :func:`_numpy_namespace`)."""
    ns = array_api_compat.array_namespace(*arrays)
    known = _numpy_namespaces.get(id(ns))
    if known is not None:
        return known
    return _namespace_for("numpy") if ns.__name__ == "array_api_compat.numpy" else ns


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


_IS_ARRAY_TYPE: dict[type, bool] = {}
""":func:`is_array`'s answer per type, for the types whose answer the type decides."""

_TYPE_DECIDES = frozenset({"builtins", "numpy", "torch", "cupy", "array_api_strict"})
"""Top-level modules whose types' instances are arrays or not by their type alone (their
classes fix ``__array_namespace__``; builtins take no instance attributes)."""


def is_array(x: Any) -> bool:
    """True for an array of any supported library (numpy, cupy, torch, array_api_strict, ...).

    array-api-compat's test (``is_array_api_obj``) tries each library in turn, about 1.4 µs a
    call: for the types of the array libraries and Python's builtins, whose answer their type
    decides, it is asked once per type (a recorded step's check walks every parameter and
    state field with it). Any other object is asked every time: one may carry
    ``__array_namespace__`` as an instance attribute or through ``__getattr__``, and classes
    made per object (``unittest.mock.Mock``) would fill a cache."""
    kind = type(x)
    known = _IS_ARRAY_TYPE.get(kind)
    if known is not None:
        return known
    answer = bool(array_api_compat.is_array_api_obj(x)) and not isinstance(x, (int, float,
                                                                                complex))
    if kind.__module__.partition(".")[0] in _TYPE_DECIDES:
        _IS_ARRAY_TYPE[kind] = answer
    return answer


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


def itemsize(dtype: Any) -> int:
    """Bytes per element of any library's ``dtype`` (``float32`` → 4, ``bfloat16`` → 2,
    ``bool`` → 1), from its name: no array is made or read."""
    bits = re.sub(r"\D", "", dtype_name(dtype))
    return max(1, int(bits) // 8) if bits else 1


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
        info = get_backend()
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
    if xp is get_backend().xp:
        return get_backend().device
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

        if not host.flags.writeable:  # a read-only memory map: torch would share it unguarded
            host = np.array(host)
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


def namespace_name(xp: Any) -> str | None:
    """The backend name of a namespace (``"numpy"``, ``"torch"``, ...), None if unknown."""
    return _name_of_namespace(xp)


class OutWriter(NamedTuple):
    """The two reductions a dense layer's gradients need, written into a given array.

    ``matmul(a, b, out)`` is ``out[...] = a @ b`` and ``sum0(x, out=out)`` is
    ``out[...] = sum(x, axis=0)``, each as ONE operation of the library (its ``out=``
    argument), where the array API would need a second pass (a copy) to land the result in an
    existing buffer. Used to write gradients straight into the flat buffers of grouped
    optimizer updates (``docs/design.md``, "Flat parameter buffers"). Same kernels, same
    results as ``a @ b`` and ``sum``.
    """

    matmul: Any
    sum0: Any


@functools.lru_cache(maxsize=16)
def out_writer(xp: Any) -> OutWriter | None:
    """An :class:`OutWriter` for ``xp``'s library (numpy, cupy, torch), None for namespaces
    without ``out=`` (array-api-strict, any other)."""
    name = _name_of_namespace(xp)
    if name == "torch":
        torch = _import("torch", "torch")
        return OutWriter(lambda a, b, out: torch.matmul(a, b, out=out),
                         lambda x, out: torch.sum(x, dim=0, out=out))
    if name == "numpy":
        # The ufuncs themselves, no Python in between (a small MLP's step makes four of these
        # calls): matmul takes ``out`` by position, and sum0 is np.add.reduce along axis 0,
        # the call np.sum(x, axis=0, out=out) makes for an ndarray (see _numpy_namespace).
        return OutWriter(np.matmul, functools.partial(np.add.reduce, axis=0))
    if name == "cupy":
        cupy = _import("cupy", "cupy")
        return OutWriter(lambda a, b, out: cupy.matmul(a, b, out=out),
                         lambda x, out: cupy.sum(x, axis=0, out=out))
    return None


@functools.lru_cache(maxsize=16)
def row_taker(xp: Any) -> Callable[..., Array]:
    """``take(x, idx, out=None)``: ``xp.take(x, idx, axis=0)`` for ``xp``'s arrays, where the
    caller knows every index is non-negative and in range (a slice of a permutation, a device
    counter); with ``out``, the rows are written into that array (of their shape and dtype)
    and it is returned.

    On torch: ``torch.index_select`` itself. array-api-compat's torch ``take`` first maps
    negative indices, ``where(idx < 0, idx + n, idx)`` — three more operations per call, each a
    kernel launch on a GPU, and ``fit`` gathers two or three arrays per step (inputs, targets,
    sample weights) and Adam's step table reads one row per flat unit inside the step. The
    rows are the same (``tests/test_backend.py``). ``out`` saves a copy where the library
    writes into it (``fit(capture=True)`` gathers each batch straight into its static
    buffers): torch ``index_select(out=)``, NumPy ``take(out=, mode="clip")`` (unbuffered:
    with the default ``mode="raise"`` NumPy gathers into a temporary first; the indices are in
    range), CuPy ``take(out=)``; elsewhere the rows are taken and copied in."""
    name = _name_of_namespace(xp)
    if name == "torch":
        torch = _import("torch", "torch")

        def take_torch(x: Array, idx: Array, out: Array | None = None) -> Array:
            if out is None:
                return torch.index_select(x, 0, idx)
            return torch.index_select(x, 0, idx, out=out)

        return take_torch
    if name in ("numpy", "cupy"):
        lib = np if name == "numpy" else _import("cupy", "cupy")
        mode = {"mode": "clip"} if name == "numpy" else {}

        def take_into(x: Array, idx: Array, out: Array | None = None) -> Array:
            if out is None:
                return xp.take(x, idx, axis=0)
            lib.take(x, idx, axis=0, out=out, **mode)
            return out

        return take_into

    def take_any(x: Array, idx: Array, out: Array | None = None) -> Array:
        rows = xp.take(x, idx, axis=0)
        if out is None:
            return rows
        out[...] = rows
        return out

    return take_any


UPDATE_BLOCK_BYTES = 256 * 1024
"""Bytes per array of one block of a cache-blocked elementwise update on a CPU (see
:func:`update_block_bytes`)."""


def update_block_bytes(xp: Any, device: Any) -> int | None:
    """Bytes per array of one block when an elementwise optimizer update on ``xp``'s arrays on
    ``device`` runs block by block (``nnxp.optim.flat``), None where it runs in one piece.

    On a CPU (numpy, torch CPU) an update of ~12 operations over a 4 MiB parameter streams
    each of its arrays through memory once per operation; run over blocks of
    :data:`UPDATE_BLOCK_BYTES`, the block's arrays stay in the core's L2 cache across the
    operations (measured 1.5-1.7x faster with Adam, SGD and momentum on numpy and torch CPU:
    ``docs/design.md``, "Cache-blocked updates"), and the temporaries are a block, not a unit.
    On a GPU every block would be another kernel launch per operation: one piece (None).
    """
    name = _name_of_namespace(xp)
    if name == "numpy":
        return UPDATE_BLOCK_BYTES
    if name == "torch" and getattr(device, "type", None) == "cpu":
        return UPDATE_BLOCK_BYTES
    return None


@functools.lru_cache(maxsize=16)
def zero_unless(xp: Any) -> Any:
    """``zero(g, gate)``: set every entry of ``g`` to 0 where the 0-d boolean ``gate`` is false,
    in place, as ONE operation of the library (no temporary the size of ``g``) — the gated
    gradient of a skipped step (``nnxp.optim``). None for namespaces without in-place writes.

    ``where(gate, g, 0)`` followed by ``g[...] = ...`` does the same in two passes and a
    temporary (on NumPy 1.4 ms against 0.47 ms for a 1024×1024 float32 gradient: most of the
    divergence gate's cost). cupy: ``copyto(g, 0, where=not gate)``; torch:
    ``masked_fill_(not gate, 0)``; neither reads the gate on the host.

    numpy: ``g[...] = 0`` when ``not gate``. A NumPy array lives in host memory, so reading
    the flag is a load, not a transfer or a wait — there is no device to wait for. The
    masked ``copyto`` visits every entry whatever the flag, which is the whole cost of a
    training step's gate when it is open, as it is on every finite step: 5.8 µs for the small
    MLP's 9546 gradients and 0.56 ms per 2²⁰ (the big MLP's 1.9 M: about 1 ms a step);
    the test costs 0.05 µs. The same zeros (``+0.0``) when it is shut.
    """
    name = _name_of_namespace(xp)
    if name == "torch":
        torch = _import("torch", "torch")
        return lambda g, gate: g.masked_fill_(torch.logical_not(gate), 0)
    if name == "numpy":
        return _zero_unless_numpy
    if name == "cupy":
        cupy = _import("cupy", "cupy")
        return lambda g, gate: cupy.copyto(g, 0, where=cupy.logical_not(gate))
    return None


def _zero_unless_numpy(g: Any, gate: Any) -> None:
    """:func:`zero_unless` on NumPy: the flag is in host memory, read where it lies."""
    if not gate:
        g[...] = 0


def synchronize(device: Any = None) -> None:
    """Wait for the GPU work queued on ``device`` (by default the active backend's device, e.g.
    GPU 1 after ``set_backend("cupy", device=1)``, not CuPy's current GPU); a no-op on CPU
    backends. Timers and benchmarks call it; pass ``model.device`` for a model on another GPU."""
    name = get_backend().name
    dev = device if device is not None else get_backend().device
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
    name = get_backend().name
    if name == "cupy":
        import cupy  # noqa: PLC0415

        pool = cupy.get_default_memory_pool()
        with cupy.cuda.Device(get_backend().device):  # the pool reports on the current GPU
            if reset_peak:
                pool.free_all_blocks()
            return {"current": int(pool.used_bytes()), "peak": int(pool.total_bytes())}
    if name == "torch" and getattr(get_backend().device, "type", None) == "cuda":
        import torch  # noqa: PLC0415

        dev = get_backend().device
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


def load_npz(path: Any, *, max_array_bytes: int = 2**33) -> dict[str, np.ndarray]:
    """Every array of the NPZ file ``path`` as host NumPy arrays, never unpickling anything.

    Read with :class:`NpzReader` (headers checked before any data is read; no array above
    ``max_array_bytes``, 8 GiB by default).

    Raises
    ------
    ValueError
        when ``path`` is not an NPZ archive (a pickle, a bare ``.npy``, a truncated or corrupt
        file) or holds an object array; the message says which.
    """
    try:
        with NpzReader(path, max_array_bytes=max_array_bytes) as reader:
            return {name: reader.array(name) for name in reader.names}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None

class NpzEntry(NamedTuple):
    """What the ``.npy`` header of one NPZ member declares (nothing of its data is read)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


_NPZ_KINDS = frozenset("biuf")  # bool, signed and unsigned integers, floats: nothing else


class NpzReader:
    """A bounded, lazy reader of an NPZ archive: headers first, data only when asked for.

    Opening checks the ZIP structure (the magic number, the central directory, member names:
    unique, ``<name>.npy``, no absolute paths, ``..`` or backslashes). :meth:`entry` reads only a
    member's ``.npy`` header and refuses object or structured dtypes, negative or non-integer
    shapes, a size above ``max_array_bytes`` (computed with Python integers, so a shape whose
    product overflows int64 is caught) and a size that disagrees with the member's size in the
    ZIP directory (or that no deflate stream of its compressed size could expand to).
    :meth:`array` then reads exactly the declared bytes, and the ZIP checksum is verified.
    Nothing is ever unpickled, and members that are never asked for are never decompressed.

    Every failure is a :class:`ValueError` whose message names the member.
    """

    def __init__(self, path: Any, *, max_array_bytes: int) -> None:
        import zipfile  # noqa: PLC0415 - only needed here

        self.path = path
        self.max_array_bytes = max_array_bytes
        self._zipfile = zipfile
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            head = self._file.read(6)
            self._file.seek(0)
            if head.startswith(b"\x93NUMPY"):
                raise ValueError("it holds a single .npy array, not an NPZ archive")
            if not head.startswith(b"PK"):
                what = f"it begins with {head!r}" if head else "it is empty"
                raise ValueError(f"it is not an NPZ archive (a zip file): {what}")
            try:
                self._zip = zipfile.ZipFile(self._file)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ValueError(f"a truncated or corrupt NPZ archive: {exc}") from None
            self._members: dict[str, Any] = {}
            for info in self._zip.infolist():
                raw = info.filename
                if (not raw.endswith(".npy") or raw.startswith(("/", "\\")) or "\\" in raw
                        or ".." in raw.split("/") or "\x00" in raw or ":" in raw[:3]):
                    raise ValueError(f"member {raw!r} is not an array entry '<name>.npy' "
                                     "(absolute, parent-directory or foreign names are refused)")
                name = raw[:-4]
                if name in self._members:
                    raise ValueError(f"member {raw!r} appears twice")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(f"member {raw!r} uses ZIP compression method "
                                     f"{info.compress_type}; only stored and deflated are read")
                self._members[name] = info
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        """The array names, without ``.npy``, in archive order."""
        return list(self._members)

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._file.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, name: str) -> tuple[Any, NpzEntry, Any, bool]:
        info = self._members.get(name)
        if info is None:
            raise ValueError(f"the archive holds no array {name!r}")
        what = f"array {name!r}"
        if info.compress_type == self._zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ValueError(f"{what}: the ZIP directory declares {info.file_size} bytes stored "
                             f"in {info.compress_size} (corrupt)")
        if info.compress_type == self._zipfile.ZIP_DEFLATED \
                and info.file_size > 1100 * info.compress_size + 1024:
            raise ValueError(f"{what}: {info.compress_size} compressed bytes cannot expand to "
                             f"the declared {info.file_size} (corrupt or a decompression bomb)")
        try:
            member = self._zip.open(info)
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                    member, max_header_size=4096)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                    member, max_header_size=4096)
            else:  # pragma: no cover - read_magic refuses other versions already
                raise ValueError(f"unknown .npy version {version}")
            header_bytes = member.tell()
        except (ValueError, OSError, EOFError, SyntaxError, TypeError,
                self._zipfile.BadZipFile) as exc:
            raise ValueError(f"{what}: invalid .npy header ({exc})") from None
        if dtype.hasobject or dtype.kind not in _NPZ_KINDS or dtype.fields is not None \
                or dtype.subdtype is not None:
            member.close()
            raise ValueError(f"{what} has dtype {dtype.str!r}; only boolean, integer and "
                             "floating-point arrays are read (never pickled objects)")
        if not isinstance(shape, tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            member.close()
            raise ValueError(f"{what} declares an invalid shape {shape!r}")
        count = 1
        for d in shape:  # Python integers: no int64 overflow
            count *= d
        nbytes = count * dtype.itemsize
        if nbytes > self.max_array_bytes:
            member.close()
            raise ValueError(f"{what} declares shape {shape} of {dtype.name} ({nbytes} bytes), "
                             f"above the limit of {self.max_array_bytes} bytes per array")
        if header_bytes + nbytes != info.file_size:
            member.close()
            raise ValueError(f"{what} declares shape {shape} of {dtype.name} ({nbytes} bytes), "
                             f"but its entry holds {info.file_size - header_bytes} data bytes "
                             "(truncated or edited file)")
        return member, NpzEntry(name, dtype.name, tuple(shape), nbytes), dtype, fortran

    def entry(self, name: str) -> NpzEntry:
        """The dtype, shape and size that member ``name`` declares (its header only)."""
        member, entry, _, _ = self._open(name)
        member.close()
        return entry

    def array(self, name: str) -> np.ndarray:
        """Member ``name`` as a host NumPy array, after the checks of :meth:`entry`."""
        member, entry, dtype, fortran = self._open(name)
        with member:
            try:
                data = bytearray(entry.nbytes)
                view = memoryview(data)
                done = 0
                while done < entry.nbytes:
                    n = member.readinto(view[done:])
                    if not n:
                        break
                    done += n
                if done != entry.nbytes or member.read(1):  # reading to the end checks the CRC
                    raise ValueError("the data does not match the declared size")
            except (ValueError, OSError, EOFError, self._zipfile.BadZipFile) as exc:
                raise ValueError(f"array {name!r}: truncated or corrupt data ({exc})") from None
            except MemoryError:
                raise ValueError(f"array {name!r}: not enough memory for {entry.nbytes} "
                                 "bytes") from None
        flat = np.frombuffer(data, dtype=dtype)
        return flat.reshape(entry.shape, order="F" if fortran else "C")


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


def host_from_bytes(data: bytes | bytearray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A host array of ``shape`` read from raw bytes in the NumPy dtype ``dtype`` (``">i4"``,
    ``"u1"``, ...), converted to the machine's byte order; ``data`` must hold exactly
    ``prod(shape)`` elements (the caller checks and says which file)."""
    flat = np.frombuffer(data, dtype=np.dtype(dtype))
    return flat.astype(flat.dtype.newbyteorder("="), copy=False).reshape(shape)


# --- NCCL (nnxp.distributed) ------------------------------------------------------------------
# The gradient all-reduce of nnxp.distributed on cupy models, through CuPy's NCCL bindings
# (``cupy.cuda.nccl``). Imported lazily: nothing here runs unless a cupy model trains under
# MPI. Written against CuPy's documented API; no GPU run has checked it (docs/distributed.md).


def _nccl_module() -> Any:
    """``cupy.cuda.nccl`` (raises ImportError, or CuPy's CUDA errors, when it cannot load)."""
    return importlib.import_module("cupy.cuda.nccl")


def _current_stream_ptr() -> int:
    """The raw ``cudaStream_t`` of CuPy's current stream on the current GPU (0: legacy)."""
    import cupy  # noqa: PLC0415 - imported lazily: only this module may name it

    return int(cupy.cuda.get_current_stream().ptr)


def nccl_available() -> bool:
    """Whether CuPy's NCCL bindings import and report NCCL present (``nccl.available``)."""
    try:
        nccl = _nccl_module()
    except Exception:  # not installed, or CuPy/NCCL shared libraries that fail to load
        return False
    return bool(getattr(nccl, "available", True))


def nccl_unique_id() -> tuple[int, ...]:
    """A fresh NCCL unique id (``nccl.get_unique_id()``): made by one rank, sent to the others
    (a tuple of ints, so it pickles through ``comm.bcast``)."""
    return tuple(_nccl_module().get_unique_id())


def nccl_communicator(n_ranks: int, unique_id: tuple[int, ...], rank: int) -> Any:
    """This rank's NCCL communicator on the *current* GPU (``NcclCommunicator(n_ranks,
    unique_id, rank)``); collective: every rank calls it with the same id, or it blocks."""
    return _nccl_module().NcclCommunicator(n_ranks, unique_id, rank)


def _nccl_dtype(nccl: Any, dtype: Any) -> int:
    name = dtype_name(dtype)
    codes = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}
    if name not in codes:
        raise TypeError(f"nnxp.distributed: NCCL all-reduce of {name} gradients is not "
                        "supported (float32 and float64 are)")
    return int(getattr(nccl, codes[name]))


def nccl_allreduce_sum(comm: Any, array: Any, stream: Any = None) -> Any:
    """Sum ``array`` (a contiguous cupy array) across the ranks of ``comm``, in place.

    Enqueued on ``stream`` (a ``cupy.cuda.Stream``, a raw pointer, or by default CuPy's current
    stream) and asynchronous: it returns before the sum is done; work enqueued later on the
    same stream sees the sum. Returns ``array``.
    """
    nccl = _nccl_module()
    if not array.flags.c_contiguous:
        raise ValueError("nccl_allreduce_sum needs a contiguous array")
    if stream is None:
        stream_ptr = _current_stream_ptr()
    else:
        stream_ptr = int(getattr(stream, "ptr", stream))
    ptr = int(array.data.ptr)
    comm.allReduce(ptr, ptr, int(array.size), _nccl_dtype(nccl, array.dtype), nccl.NCCL_SUM,
                   stream_ptr)
    return array


# --- GPU timing and memory (bench) ------------------------------------------------------------
# For nnxp.bench and benchmarks/ only; nothing here runs inside a training step. Two things that
# need the array library itself: device-side timing with CUDA events, and one definition of peak
# memory on cupy and torch CUDA (the high-water mark of bytes handed out by the allocator).


def gpu_library() -> str | None:
    """``"cupy"`` or ``"torch"`` when the active backend runs on a CUDA GPU, else ``None``."""
    if get_backend().name == "cupy":
        return "cupy"
    if get_backend().name == "torch" and getattr(get_backend().device, "type", None) == "cuda":
        return "torch"
    return None


class EventTimer:
    """Device time of a call, between two CUDA events recorded on the current stream.

    ``time(fn, *args)`` records the start event, calls ``fn``, records the end event, waits for
    it and returns the seconds between the two on the GPU's clock. Call it on an idle stream
    (after a synchronisation): then the figure is the device time of the call plus the launch
    gap of its first kernel, without the host's synchronisation round trip. The two events are
    created once and reused.
    """

    def __init__(self) -> None:
        lib = gpu_library()
        if lib == "cupy":
            import cupy  # noqa: PLC0415

            self._start, self._end = cupy.cuda.Event(), cupy.cuda.Event()
            self._record: Any = lambda event: event.record()
            self._elapsed_ms: Any = lambda: cupy.cuda.get_elapsed_time(self._start, self._end)
        elif lib == "torch":
            import torch  # noqa: PLC0415

            dev = get_backend().device
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._record = lambda event: event.record(torch.cuda.current_stream(dev))
            self._elapsed_ms = lambda: self._start.elapsed_time(self._end)
        else:
            raise BackendError(f"CUDA events need a GPU backend; the active one is "
                               f"{get_backend().name} on {get_backend().device}")

    def time(self, fn: Any, *args: Any) -> float:
        """Seconds of device time between just before and just after ``fn(*args)``."""
        self._record(self._start)
        fn(*args)
        self._record(self._end)
        self._end.synchronize()
        return float(self._elapsed_ms()) / 1e3


def event_timer() -> EventTimer | None:
    """An :class:`EventTimer` for the active GPU backend, or ``None`` on a CPU backend."""
    return EventTimer() if gpu_library() is not None else None


class MemoryHighWater:
    """Bytes in use on the GPU and their high-water mark since :meth:`reset`.

    One definition on both GPU libraries: the bytes the library's allocator has handed out to
    live arrays (block sizes, rounded up to 512 bytes by both), not what its cache holds.

    * torch CUDA: ``torch.cuda.memory_allocated`` and ``max_memory_allocated`` after
      ``reset_peak_memory_stats`` (the caching allocator tracks the peak itself).
    * cupy: the default memory pool's ``used_bytes()``; the peak is tracked by a
      ``cupy.cuda.MemoryHook`` that reads ``used_bytes()`` after every allocation from the pool
      (``malloc_postprocess``), installed from :meth:`start` to :meth:`stop`. (The pool's
      ``total_bytes()`` also counts cached free blocks, so it is not used.)

    Use :func:`memory_high_water`, which starts and stops it.
    """

    HOOK_NAME = "nnxp-memory-high-water"

    def __init__(self) -> None:
        self.library = gpu_library()
        if self.library is None:
            raise BackendError(f"GPU memory counters need a GPU backend; the active one is "
                               f"{get_backend().name} on {get_backend().device}")
        self._device = get_backend().device
        self._peak = 0
        self._hook: Any = None

    def _pool(self) -> Any:
        import cupy  # noqa: PLC0415

        return cupy.get_default_memory_pool()

    def start(self) -> None:
        if self.library == "cupy":
            import cupy  # noqa: PLC0415

            pool, watcher = self._pool(), self

            class _Hook(cupy.cuda.MemoryHook):
                name = MemoryHighWater.HOOK_NAME

                def malloc_postprocess(self, **kwargs: Any) -> None:
                    if kwargs.get("mem_ptr"):  # 0 when the allocation failed
                        watcher.observe(int(pool.used_bytes()))

            self._hook = _Hook()
            self._hook.__enter__()
        self.reset()

    def observe(self, used: int) -> None:
        """Raise the high-water mark to ``used`` bytes if it is higher (the cupy hook's call)."""
        self._peak = max(self._peak, used)

    def stop(self) -> None:
        if self._hook is not None:
            self._hook.__exit__(None, None, None)
            self._hook = None

    def reset(self) -> None:
        """Start a new high-water mark at the bytes in use now."""
        if self.library == "torch":
            import torch  # noqa: PLC0415

            torch.cuda.reset_peak_memory_stats(self._device)
        else:
            self._peak = int(self._pool().used_bytes())

    def current(self) -> int:
        """Bytes in use now."""
        if self.library == "torch":
            import torch  # noqa: PLC0415

            return int(torch.cuda.memory_allocated(self._device))
        return int(self._pool().used_bytes())

    def peak(self) -> int:
        """The most bytes in use at any moment since :meth:`reset`."""
        if self.library == "torch":
            import torch  # noqa: PLC0415

            return int(torch.cuda.max_memory_allocated(self._device))
        return max(self._peak, self.current())


@contextlib.contextmanager
def memory_high_water() -> Iterator[MemoryHighWater | None]:
    """A started :class:`MemoryHighWater` for the active GPU backend (``None`` on a CPU one),
    stopped on exit."""
    if gpu_library() is None:
        yield None
        return
    watcher = MemoryHighWater()
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


# ==============================================================================================
# Diagnosis: what works here, and why not (`nnxp doctor`, the test suite's backend check)
# ==============================================================================================
#
# Everything in this section imports cupy and torch inside functions, catches every failure and
# returns records; `nnxp.cli` formats them. `explain_cuda_failure` is also what the GPU errors
# above use, so `set_backend` and `nnxp doctor` name the same cause.

WORKS = "works"
NOT_INSTALLED = "not installed"
NO_DRIVER = "no driver"
NO_DEVICE = "no device"
MISSING_LIBRARY = "missing CUDA library"
FAILED = "failed"
PROBE_STATUSES: tuple[str, ...] = (WORKS, NOT_INSTALLED, NO_DRIVER, NO_DEVICE, MISSING_LIBRARY,
                                   FAILED)
"""What a probe can find, from best to worst: the words `nnxp doctor` prints."""

_HINTS = {
    NO_DRIVER: "install or update the NVIDIA driver (nvidia-smi must list the GPU)",
    NO_DEVICE: "check that nvidia-smi lists the GPU and that CUDA_VISIBLE_DEVICES does not "
    "hide it",
    MISSING_LIBRARY: "install the CUDA libraries with pip install 'nnxp[cuda12]' (or "
    "'nnxp[cuda13]' for a CUDA 13 driver); see docs/backends.md",
}

# Shared libraries of the CUDA toolkit (and cuDNN, NCCL) as the loaders name them:
# libcublas.so.12, libnvrtc.so.13, libcudnn_graph.so.9, cublas64_12.dll, nvrtc64_120_0.dll.
_CUDA_LIBRARY = re.compile(
    r"\b((?:lib)?(?:cuda|nvcuda|cudart|cublas(?:Lt)?|cufft|curand|cusolver|cusparse|nvrtc"
    r"(?:-builtins)?|nvJitLink|nvjitlink|cudnn[a-z_]*|nccl|cutensor|cupti|nvToolsExt|nvidia-ml|"
    r"cufile)(?:\.so(?:\.\d+)*|\.dylib|(?:64_\d+)?(?:_\d+)*\.dll))",
)
_DRIVER_LIBRARIES = ("libcuda.", "cuda.dll", "nvcuda.dll", "libnvidia-ml.", "nvidia-ml.dll")
_NO_DRIVER = re.compile(
    r"no nvidia driver|nvidia driver on your system is too old|driver version is insufficient|"
    r"insufficientdriver|insufficient_driver|cudaErrorDriver|CUDA_ERROR_NOT_FOUND|"
    r"cuda driver initialization failed", re.IGNORECASE)
_NO_DEVICE = re.compile(
    r"cudaErrorNoDevice|CUDA_ERROR_NO_DEVICE|no CUDA-capable device|no CUDA GPUs are available|"
    r"reports 0 GPUs|sees no GPU", re.IGNORECASE)
# NVRTC compiling a CuPy kernel without the toolkit's headers (the cudart wheel ships them):
# 'catastrophic error: cannot open source file "cuda_fp16.h"'
_CUDA_HEADER = re.compile(r"cannot open source file \W*([\w./-]+\.h)\b")


class CudaFailure(NamedTuple):
    """What went wrong, in the terms of `PROBE_STATUSES`: the kind, the library, the message."""

    kind: str
    library: str  # the shared library that could not be loaded ("libcublas.so.12"), or ""
    message: str  # the error as one line: "OSError: libcublas.so.12: cannot open ..."


def _one_line(error: BaseException | str, limit: int = 400) -> str:
    if isinstance(error, str):
        text = error
    else:
        parts: list[str] = []
        current: BaseException | None = error
        while current is not None and len(parts) < 4:  # the error and what it was raised from
            parts.append(f"{type(current).__name__}: {current}")
            current = current.__cause__ or current.__context__
        text = " <- ".join(parts)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain_cuda_failure(error: BaseException | str) -> CudaFailure:
    """Sort an error from cupy, torch or the CUDA loader into no driver / no device / missing
    library / failed, reading its text (the libraries raise ImportError, OSError, RuntimeError or
    their own CUDARuntimeError, and name the file the loader could not open).

    A missing ``libcuda`` (the driver's own library) means no driver; any other CUDA library
    (``libcublas.so.12``, ``libnvrtc.so.13``, ``libcudnn.so.9``) means the toolkit's libraries are
    not installed where the library looks for them.
    """
    message = _one_line(error)
    for match in _CUDA_LIBRARY.finditer(message):
        library = match.group(1)
        if library.lower().startswith(_DRIVER_LIBRARIES) or library.lower() == "libcuda.so":
            return CudaFailure(NO_DRIVER, library, message)
        return CudaFailure(MISSING_LIBRARY, library, message)
    header = _CUDA_HEADER.search(message)
    if header:
        return CudaFailure(MISSING_LIBRARY, header.group(1), message)
    if _NO_DRIVER.search(message):
        return CudaFailure(NO_DRIVER, "", message)
    if _NO_DEVICE.search(message):
        return CudaFailure(NO_DEVICE, "", message)
    return CudaFailure(FAILED, "", message)


def _cuda_failure_sentence(what: str, error: BaseException) -> str:
    """"<what>: no driver (<error>). <what to do>." for the BackendErrors above."""
    failure = explain_cuda_failure(error)
    library = f" {failure.library}" if failure.kind == MISSING_LIBRARY and failure.library else ""
    hint = _HINTS.get(failure.kind, "check the driver with nvidia-smi, and run `nnxp doctor`")
    return f"{what}: {failure.kind}{library} ({failure.message}). To fix: {hint}."


class Probe(NamedTuple):
    """One backend on one device, as :func:`diagnose` found it."""

    spec: str  # for set_backend: "numpy", "torch:cuda:0", "cupy:1"; "cupy" when no GPU is known
    device: str  # what the device is ("cpu", "NVIDIA H200"), "" when there is none
    status: str  # one of PROBE_STATUSES
    detail: str  # why it does not work (and what to do), "" when it works
    versions: tuple[tuple[str, str], ...]  # ("torch", "2.13.0"), ("CUDA", "12.8"), ...

    @property
    def works(self) -> bool:
        return self.status == WORKS


class Diagnosis(NamedTuple):
    """What `nnxp doctor` prints: the NVIDIA driver as one line, then one probe per backend."""

    driver: str
    probes: tuple[Probe, ...]


def _version(module: Any) -> str:
    return str(getattr(module, "__version__", "?"))


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"  # 12040 -> "12.4"


def _nvidia_driver() -> tuple[str | None, str]:
    """(the driver's CUDA version, None) when ``libcuda`` loads, else (None, why not).

    Asked through ctypes, so the answer does not depend on cupy or torch being installed.
    """
    import ctypes  # noqa: PLC0415 - only the doctor needs it

    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None, f"{name} loads but cuDriverGetVersion failed"
        return _cuda_version(version.value), name
    return None, errors[0] if errors else "no libcuda on this system"


def _matmul_check(spec: str) -> None:
    """Raise unless a small float32 matmul on ``spec`` agrees with NumPy's float64 one."""
    info = _make(spec)
    a = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    b = np.linspace(0.75, -0.5, 20).reshape(4, 5)
    xa = asarray(a, "float32", xp=info.xp, device=info.device)
    xb = asarray(b, "float32", xp=info.xp, device=info.device)
    got = to_numpy(info.xp.matmul(xa, xb))
    want = a @ b
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
        raise ArithmeticError(f"a 3x4 @ 4x5 float32 matmul on {spec} gave {got.tolist()}, "
                              f"NumPy gives {want.tolist()}")


def _probe(spec: str, device: str, versions: tuple[tuple[str, str], ...],
           driver_problem: str | None) -> Probe:
    try:
        _matmul_check(spec)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding here
        return _failed(spec, device, exc, versions, driver_problem)
    return Probe(spec, device, WORKS, "", versions)


def _failed(spec: str, device: str, error: BaseException, versions: tuple[tuple[str, str], ...],
            driver_problem: str | None) -> Probe:
    failure = explain_cuda_failure(error)
    needs_driver = spec.startswith(("cupy", "torch:cuda"))
    if failure.kind == FAILED and driver_problem is not None and needs_driver:
        return Probe(spec, device, NO_DRIVER, f"{driver_problem} ({failure.message})", versions)
    detail = failure.message if not failure.library else f"{failure.library} ({failure.message})"
    hint = _HINTS.get(failure.kind)
    return Probe(spec, device, failure.kind, detail + (f"; {hint}" if hint else ""), versions)


def _probe_cpu_libraries() -> list[Probe]:
    compat = ("array-api-compat", _version(array_api_compat))
    probes = [_probe("numpy", "cpu", (("numpy", _version(np)), compat), None)]
    if not _installed("array_api_strict"):
        probes.append(Probe("array_api_strict", "", NOT_INSTALLED,
                            f"install {_EXTRAS['array_api_strict']}", ()))
    else:
        strict = importlib.import_module("array_api_strict")
        probes.append(_probe("array_api_strict", "CPU_DEVICE",
                             (("array-api-strict", _version(strict)),), None))
    return probes


def _probe_torch(driver_problem: str | None) -> list[Probe]:
    if not _installed("torch"):
        detail = f"install {_EXTRAS['torch']}"
        return [Probe("torch:cpu", "", NOT_INSTALLED, detail, ()),
                Probe("torch:cuda", "", NOT_INSTALLED, detail, ())]
    try:
        import torch  # noqa: PLC0415 - imported lazily: only this module may name it
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA build whose libraries are missing
        return [_failed(spec, "", exc, (), driver_problem) for spec in ("torch:cpu", "torch:cuda")]
    versions: tuple[tuple[str, str], ...] = (("torch", _version(torch)),)
    probes = [_probe("torch:cpu", "cpu", versions, None)]
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    if cuda is None and hip is None:
        probes.append(Probe("torch:cuda", "", NOT_INSTALLED,
                            f"torch {torch.__version__} is a CPU-only build; for the GPU install "
                            "a CUDA build of torch (docs/backends.md)", versions))
        return probes
    versions += (("CUDA", str(cuda)),) if cuda is not None else (("HIP", str(hip)),)
    try:
        torch.cuda.init()  # raises with the reason where is_available() only says False
        count = torch.cuda.device_count()
    except Exception as exc:  # noqa: BLE001
        return [*probes, _failed("torch:cuda", "", exc, versions, driver_problem)]
    if count == 0:
        return [*probes, Probe("torch:cuda", "", NO_DEVICE,
                      f"CUDA reports 0 GPUs; {_HINTS[NO_DEVICE]}", versions)]
    for index in range(count):
        try:
            name = torch.cuda.get_device_name(index)
        except Exception as exc:  # noqa: BLE001
            probes.append(_failed(f"torch:cuda:{index}", "", exc, versions, driver_problem))
            continue
        probes.append(_probe(f"torch:cuda:{index}", name, versions, driver_problem))
    return probes


def _probe_cupy(driver_version: str | None, driver_problem: str | None) -> list[Probe]:
    if not _installed("cupy"):
        extra = "cuda13" if driver_version and int(driver_version.split(".")[0]) >= 13 \
            else "cuda12"
        why = f"pip install 'nnxp[{extra}]'" + (
            f" (the driver supports CUDA {driver_version})" if driver_version else
            " on a machine with an NVIDIA driver for CUDA 12 ('nnxp[cuda13]' for CUDA 13)")
        return [Probe("cupy", "", NOT_INSTALLED, why, ())]
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():  # CuPy warns when it cannot find a CUDA toolkit; the
        warnings.simplefilter("ignore")  # probes below report what that breaks
        try:
            import cupy  # noqa: PLC0415 - imported lazily: only this module may name it
        except Exception as exc:  # noqa: BLE001 - e.g. libcudart missing
            return [_failed("cupy", "", exc, (), driver_problem)]
        versions: tuple[tuple[str, str], ...] = (("cupy", _version(cupy)),)
        try:
            versions += (("CUDA runtime",
                          _cuda_version(cupy.cuda.runtime.runtimeGetVersion())),)
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001
            return [_failed("cupy", "", exc, versions, driver_problem)]
        if count == 0:
            return [Probe("cupy", "", NO_DEVICE,
                      f"CUDA reports 0 GPUs; {_HINTS[NO_DEVICE]}", versions)]
        probes = []
        for index in range(count):
            try:
                name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception as exc:  # noqa: BLE001
                probes.append(_failed(f"cupy:{index}", "", exc, versions, driver_problem))
                continue
            probes.append(_probe(f"cupy:{index}", name, versions, driver_problem))
        return probes


def diagnose() -> Diagnosis:
    """Probe every backend on every device: versions, and a small matmul checked against NumPy.

    Never raises for a backend that does not work: each failure becomes a :class:`Probe` whose
    ``status`` says which of not installed, no driver, no device, missing CUDA library or failed
    it is, with the error and what to do in ``detail``.
    """
    driver_version, where = _nvidia_driver()
    driver_problem = None if driver_version else f"no NVIDIA driver ({where})"
    driver = (f"CUDA {driver_version} ({where})" if driver_version
              else f"not found ({where})")
    probes = [*_probe_cpu_libraries(), *_probe_torch(driver_problem),
              *_probe_cupy(driver_version, driver_problem)]
    return Diagnosis(driver, tuple(probes))


def _matches(requirement: str, spec: str) -> bool:
    """Whether the probe ``spec`` is (one of the devices of) the backend ``requirement``."""
    if spec == requirement or spec.startswith(requirement + ":"):
        return True
    # array_api_strict's devices are all on the CPU: its one probe stands for any of them
    return spec == "array_api_strict" and requirement.startswith("array_api_strict:")


def unmet_requirements(required: Sequence[str], probes: Sequence[Probe]) -> list[tuple[str, str]]:
    """``(name, why)`` for each backend in ``required`` that works on none of its devices.

    A name is a backend (``"cupy"``, ``"torch"``), a backend and device kind (``"torch:cuda"``)
    or one device (``"cupy:1"``, ``"torch:cuda:0"``); it is met when at least one probe it names
    works. Raises ``ValueError`` for a name that is no backend.
    """
    unmet = []
    for name in required:
        library = name.split(":")[0].lower().replace("-", "_")
        if library not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; valid names are {', '.join(BACKENDS)}, "
                             "optionally with a device: torch:cuda, cupy:0, torch:cuda:1")
        named = [p for p in probes if _matches(name, p.spec)]
        if any(p.works for p in named):
            continue
        if not named:
            known = ", ".join(p.spec for p in probes if p.spec.split(":")[0] == library)
            unmet.append((name, f"no such device here (found: {known or 'none'})"))
        else:
            worst = named[0]
            unmet.append((name, f"{worst.status}: {worst.detail}" if worst.detail
                          else worst.status))
    return unmet


def host_all_finite(a: Any) -> bool:
    """Whether every entry of the host array ``a`` is finite (integers always are)."""
    a = np.asarray(a)
    return bool(np.isfinite(a).all()) if a.dtype.kind in "fc" else True


def host_all_positive(a: Any, *, allow_zero: bool = False) -> bool:
    """Whether every entry of the host array ``a`` is > 0 (or >= 0 with ``allow_zero``)."""
    a = np.asarray(a)
    return bool((a >= 0).all() if allow_zero else (a > 0).all())


def nonfinite_rows(a: Any) -> list[int]:
    """The indices of the rows of the host 2-D array ``a`` that hold NaN or infinity."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return []
    return np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)).tolist()


def quiet_float_errors() -> Any:
    """A context in which NumPy's floating-point warnings (overflow, invalid) stay silent:
    for callers that check the result for NaN and infinity themselves."""
    return np.errstate(all="ignore")


# ----------------------------------------------------------------------------------------------
# Recording device work: CUDA graphs for ``fit(capture=True)``
# ----------------------------------------------------------------------------------------------


class CapturedGraph:
    """A recorded sequence of device operations: :meth:`replay` enqueues all of it again on
    the current stream, reading and writing the same memory as when it was recorded."""

    def __init__(self, launch: Callable[[], None], keep: Any = None) -> None:
        self._launch = launch
        self._keep = keep  # what must outlive the graph (CuPy: its private memory pool)
        self.replays = 0

    def replay(self) -> None:
        # Counted first: an exception a signal handler raises during the launch, a C call
        # (KeyboardInterrupt from Ctrl-C, SystemExit from a scheduler's SIGTERM handler), is
        # raised as soon as it returns, with the work queued; whoever advances host counts
        # after a replay reads this count to tell whether the launch was made. A launch that
        # fails (an Exception: a CUDA error) queued nothing: not counted.
        self.replays += 1
        try:
            self._launch()
        except Exception:
            self.replays -= 1
            raise


class GraphRecorder:
    """Records a function's device work into a :class:`CapturedGraph` (:func:`graph_capture`).

    ``capture(fn)`` calls ``fn()`` once with recording on: on a GPU its operations are
    recorded, *not executed*, and the arrays it returns are the graph's static outputs, which
    every :meth:`CapturedGraph.replay` overwrites in place. Every array that ``fn`` reads and
    that outlives it must be the same memory at every replay. Each graph gets its own private
    memory pool, so the arrays made during recording are never handed to anything else.
    """

    kind = "none"

    def warm_up(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` eagerly before it is recorded (lazy library set-up, e.g. cuBLAS
        handles, happens here rather than inside a recording); returns its result."""
        return fn()

    def capture(self, fn: Callable[[], Any]) -> tuple[CapturedGraph, Any]:  # pragma: no cover
        raise NotImplementedError


class _TorchGraphRecorder(GraphRecorder):
    """``torch.cuda.CUDAGraph`` recorded under ``torch.cuda.graph`` (which synchronises once
    before recording and gives the graph a private memory pool), on a side stream of the
    recorder's own: the same stream for the warm-up steps and the recordings. Libraries keep
    per-stream state (cuBLAS workspaces) that is then made by a warm-up, not inside a
    recording; and ``torch.cuda.graph``'s default stream is made once per process on whichever
    GPU records first, which for a model on another GPU would record on the wrong device."""

    kind = "torch.cuda.CUDAGraph"

    def __init__(self, device: Any) -> None:
        self.device = device
        self._stream: Any = None

    def _side(self) -> Any:
        import torch  # noqa: PLC0415 - imported lazily: only this module may name it

        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def warm_up(self, fn: Callable[[], Any]) -> Any:
        """On the side stream, as torch's CUDA-graph notes ask of the iterations before a
        recording; the current stream then waits for it (stream order, no host wait)."""
        import torch  # noqa: PLC0415 - imported lazily: only this module may name it

        current = torch.cuda.current_stream(self.device)
        side = self._side()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                return fn()
        finally:  # also when the step raised: what it queued on the side stream comes first
            current.wait_stream(side)

    def capture(self, fn: Callable[[], Any]) -> tuple[CapturedGraph, Any]:
        import torch  # noqa: PLC0415 - imported lazily: only this module may name it

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=self._side()):
            outputs = fn()
        return CapturedGraph(graph.replay, keep=graph), outputs


class _CupyGraphRecorder(GraphRecorder):
    """CuPy stream capture: ``Stream.begin_capture()`` / ``end_capture()`` on a non-blocking
    stream (relaxed mode, CuPy's default), then ``Graph.launch`` on the current stream. The
    arrays made while recording come from a private ``cupy.cuda.MemoryPool`` kept alive with
    the graph (CuPy's shared pool would hand memory the graph writes to other arrays)."""

    kind = "cupy.cuda.Graph"

    def __init__(self, device: Any) -> None:
        self.device = device

    def capture(self, fn: Callable[[], Any]) -> tuple[CapturedGraph, Any]:
        import cupy  # noqa: PLC0415 - imported lazily: only this module may name it

        with cupy.cuda.Device(self.device):
            pool = cupy.cuda.MemoryPool()
            stream = cupy.cuda.Stream(non_blocking=True)
            stream.wait_event(cupy.cuda.get_current_stream().record())  # after queued work
            with stream, cupy.cuda.using_allocator(pool.malloc):
                stream.begin_capture()
                try:
                    outputs = fn()
                finally:
                    graph = stream.end_capture()

        def launch() -> None:
            graph.launch(stream=cupy.cuda.get_current_stream())

        return CapturedGraph(launch, keep=(graph, pool, stream)), outputs


def cupy_capture_problem(device: Any) -> str | None:
    """Why CuPy cannot record a training step on ``device``, or None when it can.

    CuPy refuses every cuBLAS call on a stream that is being captured (its ``cublas.setStream``
    raises NotImplementedError, up to CuPy 14.2 at least), and every step multiplies matrices
    with cuBLAS: the recording would stop at the first Dense layer. Asked of the installed CuPy
    itself, with no kernel run: the device's cuBLAS handle is pointed at a stream while it
    records nothing, and the empty recording is ended. Anything else that goes wrong on the way
    is a problem too (the step then runs unrecorded, which is always correct).
    """
    import cupy  # noqa: PLC0415 - imported lazily: only this module may name it

    try:
        with cupy.cuda.Device(device):
            handle = cupy.cuda.get_cublas_handle()
            stream = cupy.cuda.Stream(non_blocking=True)
            stream.begin_capture()
            try:
                cupy.cuda.cublas.setStream(handle, stream.ptr)
            except NotImplementedError as exc:
                return (f"CuPy {getattr(cupy, '__version__', '?')} refuses cuBLAS calls while a "
                        f"stream is captured ({exc}), and every step multiplies matrices with "
                        "cuBLAS")
            finally:
                stream.end_capture()
            cupy.cuda.cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    except Exception as exc:  # noqa: BLE001 - any failure of the question: do not record
        return f"asking CuPy whether it records cuBLAS calls failed: {type(exc).__name__}: {exc}"
    return None


def graph_capture(xp: Any, device: Any) -> GraphRecorder | None:
    """A :class:`GraphRecorder` for arrays of ``xp`` on ``device``, or None where the backend
    cannot record device work (numpy, array-api-strict, torch on the CPU).

    CuPy records with stream capture and torch CUDA with ``torch.cuda.CUDAGraph``; both need a
    GPU (not exercised by the test suite without one: ``docs/training.md`` lists the checks a
    GPU run must make). CuPy only where :func:`cupy_capture_problem` finds nothing in the way
    (CuPy up to 14.2 at least refuses the cuBLAS calls of every training step).
    """
    name = _name_of_namespace(xp)
    if name == "cupy":
        return None if cupy_capture_problem(device) is not None else _CupyGraphRecorder(device)
    if name == "torch" and getattr(device, "type", str(device)) == "cuda":
        return _TorchGraphRecorder(device)
    return None
# Device memory: free memory and a configured budget (the memory plan of nnxp.summary, the
# refusal at the start of fit, and any other "does this fit?" question ask here)
# ----------------------------------------------------------------------------------------------

_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
               "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024,
               "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any, *, argument: str = "memory_budget") -> int:
    """A byte count from an int (``8_000_000_000``) or a string with a unit (``"8GB"``,
    ``"7.5 GiB"``, ``"512MiB"``; k/M/G/T are powers of 1000, KiB/MiB/GiB/TiB of 1024).

    Raises ValueError naming ``argument`` for anything else, or for a count below one byte.
    """
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be a number of bytes or a string such as '8GiB', "
                        f"got {value!r}")
    if isinstance(value, (int, np.integer)):
        n = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        n = int(value)
    elif isinstance(value, str):
        m = _BYTES.match(value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _BYTE_UNITS:
            raise ValueError(f"{argument} must be a number of bytes or a string such as "
                             f"'8GiB', '512MB' or '2e9', got {value!r}")
        n = int(float(m.group(1)) * _BYTE_UNITS[unit])
    else:
        raise TypeError(f"{argument} must be a number of bytes or a string such as '8GiB', "
                        f"got {type(value).__name__} {value!r}")
    if n < 1:
        raise ValueError(f"{argument} must be at least 1 byte, got {value!r}")
    return n


def _budget_from_environment() -> int | None:
    spec = os.environ.get("NNXP_MEMORY_BUDGET", "").strip()
    return parse_bytes(spec, argument="NNXP_MEMORY_BUDGET") if spec else None


_memory_budget: int | None = _budget_from_environment()


def set_memory_budget(budget: int | str | None) -> int | None:
    """Set the process-wide device memory budget in bytes (``None`` removes it); returns the
    previous one.

    ``budget`` is an int or a string with a unit (``"6GiB"``, see :func:`parse_bytes`). The
    ``NNXP_MEMORY_BUDGET`` environment variable, read once at import, sets the first value.
    ``fit(memory_budget=...)`` overrides it for one call. See :func:`available_memory`.
    """
    global _memory_budget
    previous = _memory_budget
    _memory_budget = None if budget is None else parse_bytes(budget)
    return previous


def get_memory_budget() -> int | None:
    """The configured device memory budget in bytes (:func:`set_memory_budget`), or None."""
    return _memory_budget


def free_device_memory(xp: Any = None, device: Any = None) -> int | None:
    """Bytes the active backend's device (or ``xp``/``device``) can still allocate, where the
    library tells; ``None`` on CPU backends (numpy, torch CPU, array-api-strict).

    * torch CUDA: ``torch.cuda.mem_get_info`` (free on the GPU) plus what torch's caching
      allocator has reserved but not handed out (``memory_reserved − memory_allocated``), since
      that is reusable without asking the driver.
    * cupy: ``cupy.cuda.runtime.memGetInfo`` plus the free blocks held by CuPy's default
      memory pool (``pool.free_bytes()``), on the model's GPU.
    """
    info = get_backend()
    name = info.name if xp is None else (_name_of_namespace(xp) or "")
    if device is not None:
        dev = device
    else:
        dev = info.device if xp is None else _default_device(xp)
    if name == "cupy":
        import cupy  # noqa: PLC0415

        with cupy.cuda.Device(dev):
            free, _total = cupy.cuda.runtime.memGetInfo()
            return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    if name == "torch" and getattr(dev, "type", str(dev)).startswith("cuda"):
        import torch  # noqa: PLC0415

        free, _total = torch.cuda.mem_get_info(dev)
        cached = int(torch.cuda.memory_reserved(dev)) - int(torch.cuda.memory_allocated(dev))
        return int(free) + max(cached, 0)
    return None


class MemoryLimit(NamedTuple):
    """What :func:`available_memory` found: the usable bytes (``None``: no limit known) and a
    phrase saying where the number comes from, for messages."""

    nbytes: int | None
    source: str
    measured: bool = False
    """Whether ``nbytes`` is the device's free memory measured now (arrays already on the
    device are outside it), not a budget (which everything nnxp allocates counts against)."""


def available_memory(budget: int | str | None = None, *, xp: Any = None,
                     device: Any = None) -> MemoryLimit:
    """The memory a plan must fit in: the smaller of the budget and the device's free memory.

    ``budget`` (bytes or a string such as ``"6GiB"``) overrides the configured one
    (:func:`set_memory_budget`, ``NNXP_MEMORY_BUDGET``). On a GPU backend the free memory of
    :func:`free_device_memory` always counts too; on CPU backends only a budget limits, and
    without one the result is ``MemoryLimit(None, ...)`` (nothing is refused).
    """
    chosen = _memory_budget if budget is None else parse_bytes(budget)
    free = free_device_memory(xp, device)
    if chosen is not None and (free is None or chosen <= free):
        where = "the memory_budget argument" if budget is not None else "the configured budget"
        extra = "" if free is None else f" (the device has {free:,} bytes free)"
        return MemoryLimit(chosen, f"{where}{extra}")
    if free is not None:
        return MemoryLimit(free, "free device memory", measured=True)
    return MemoryLimit(None, "no limit (a CPU backend and no memory budget)")


# ----------------------------------------------------------------------------------------------
# TF32 matrix multiplication (Ampere and later NVIDIA GPUs): off unless asked for
# ----------------------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _tf32_from_environment() -> bool | None:
    spec = os.environ.get("NNXP_TF32")
    if spec is None:
        return None
    value = spec.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"NNXP_TF32 must be 1/0 (or true/false, yes/no, on/off), got {spec!r}")
    return value in _TRUE


_tf32 = _tf32_from_environment()


def _apply_tf32(enabled: bool, name: str | None) -> str:
    """Set the float32 matmul mode of the library ``name`` (torch, cupy); a note for the rest."""
    if name == "torch":
        import torch  # noqa: PLC0415

        torch.backends.cuda.matmul.allow_tf32 = enabled  # CUDA matmuls only; CPU unaffected
        return f"torch.backends.cuda.matmul.allow_tf32 = {enabled}"
    if name == "cupy":
        linalg = importlib.import_module("cupy._core._routines_linalg")
        import cupy  # noqa: PLC0415

        mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
        linalg.set_compute_type(cupy.float32, mode)
        os.environ["CUPY_TF32"] = "1" if enabled else "0"  # for CuPy code read later
        return f"CuPy float32 compute type {'TF32' if enabled else 'default'}"
    return f"no effect on {name or 'this backend'} (TF32 exists only on NVIDIA GPUs)"


def set_tf32(enabled: bool) -> bool | None:
    """Allow (``True``) or forbid (``False``) TF32 tensor cores for float32 matrix products on
    cupy and torch CUDA; returns the previous setting (``None``: never set).

    Off by default, as in torch: TF32 keeps float32's range but rounds the inputs of each
    product to a 10-bit mantissa (about 3 decimal digits), which speeds up large matmuls several
    times on Ampere and later GPUs. It sets ``torch.backends.cuda.matmul.allow_tf32`` and
    CuPy's float32 compute type (``cupy._core._routines_linalg.set_compute_type``, what
    ``CUPY_TF32=1`` selects) for the libraries already imported, and for torch/cupy when a
    backend is selected later. The ``NNXP_TF32`` environment variable (``1``/``0``) gives the
    first value. On CPU backends it changes nothing (see :func:`tf32_status`); not an error.
    """
    global _tf32
    if not isinstance(enabled, bool):
        raise TypeError(f"set_tf32 expects True or False, got {type(enabled).__name__} "
                        f"{enabled!r}")
    previous, _tf32 = _tf32, enabled
    _apply_tf32_to_loaded(enabled)
    return previous


def _apply_tf32_to_loaded(enabled: bool) -> None:
    active = get_backend().name
    for name in sorted(_loaded_gpu_libraries()):
        if name == active:
            _apply_tf32(enabled, name)  # the backend in use: a failure is the caller's to see
            continue
        try:  # a library imported but not in use (maybe without a GPU): best effort
            _apply_tf32(enabled, name)
        except Exception:  # noqa: BLE001  # pragma: no cover - needs a broken GPU library
            pass


def _loaded_gpu_libraries() -> set[str]:
    """The GPU-capable libraries this process has imported (never imports one)."""
    return {name for name in ("torch", "cupy") if name in sys.modules}


def get_tf32() -> bool:
    """Whether TF32 matmuls are requested (:func:`set_tf32`, ``NNXP_TF32``); False by default."""
    return bool(_tf32)


@contextlib.contextmanager
def tf32(enabled: bool = True) -> Iterator[None]:
    """``with nnxp.tf32():`` — :func:`set_tf32` for a block, restoring the previous mode after.

    The libraries' flags are process-wide, so this is not thread-local."""
    global _tf32
    previous = set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(bool(previous))  # never configured before: back to the libraries' default, off
        _tf32 = previous


def tf32_status() -> dict[str, Any]:
    """The TF32 setting for reports (``nnxp doctor``, benchmark records).

    ``{"requested": bool, "configured": bool, "backend": name, "effective": bool, "note": str}``
    — ``effective`` is True only when TF32 is requested and the active backend is a GPU one
    (cupy, torch CUDA) whose library flag is set; ``note`` says why not otherwise.
    """
    info = get_backend()
    on_gpu = info.name == "cupy" or (
        info.name == "torch" and getattr(info.device, "type", str(info.device)) == "cuda")
    requested = bool(_tf32)
    if not on_gpu:
        note = (f"TF32 {'requested but ' if requested else ''}not applicable: {info.name} on "
                f"{info.device} is a CPU backend (float32 matmuls stay IEEE float32)")
    elif requested:
        note = "TF32 on for float32 matmuls (10-bit mantissa inputs, float32 accumulation)"
    else:
        note = "TF32 off (IEEE float32 matmuls); nnxp.set_tf32(True) or NNXP_TF32=1 enables it"
    return {"requested": requested, "configured": _tf32 is not None, "backend": info.name,
            "effective": requested and on_gpu, "note": note}


if _tf32 is not None:  # NNXP_TF32 given: the backend made at import gets it too
    _apply_tf32_to_loaded(_tf32)


# ----------------------------------------------------------------------------------------------
# Host data larger than the device: memory maps and chunk uploads
# (nnxp.data streams through these; the library-specific calls live here only)
# ----------------------------------------------------------------------------------------------

def is_memory_map(x: Any) -> bool:
    """Whether ``x`` is a NumPy memory map (``np.memmap``, ``np.load(..., mmap_mode="r")``)."""
    return isinstance(x, np.memmap)


def open_npy(path: Any) -> np.ndarray:
    """The ``.npy`` file at ``path`` as a read-only memory map (nothing is read yet).

    Raises ValueError naming the file for what is not a plain ``.npy`` array (an ``.npz``, a
    pickled object array, a damaged header).
    """
    try:
        out = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot open {os.fspath(path)!r} as a .npy array: {exc}") from None
    if not isinstance(out, np.ndarray):  # np.load of an .npz gives an NpzFile
        raise ValueError(f"{os.fspath(path)!r} is not a .npy array (got {type(out).__name__}); "
                         "save each array with numpy.save")
    return out


def host_info(x: Any) -> tuple[tuple[int, ...], str] | None:
    """``(shape, dtype name)`` of host data without reading it (a memory map stays unread), or
    None for what is not a NumPy array."""
    if isinstance(x, np.ndarray):
        return tuple(int(s) for s in x.shape), x.dtype.name
    return None


def can_cast_safely(dtype_from: str, dtype_to: str) -> bool:
    """Whether NumPy's ``same_kind`` casting allows ``dtype_from`` → ``dtype_to`` (float64 to
    float32 yes; complex or strings to float no); integers and booleans to a float too."""
    src = np.dtype(dtype_from)
    if src.kind in "biu":
        return np.dtype(dtype_to).kind in "fiu"
    return bool(np.can_cast(src, np.dtype(dtype_to), casting="same_kind"))


def read_rows(a: Any, start: int, stop: int, order: Any = None, dtype: Any = None) -> np.ndarray:
    """Rows ``start:stop`` of host array ``a`` (a memory map reads only these pages) as a new
    in-memory NumPy array, in the order ``order`` (indices relative to ``start``) when given,
    cast to ``dtype`` when given. Peak host memory: about two copies of the rows."""
    part = a[start:stop]
    out = np.asarray(part)[np.asarray(order)] if order is not None else np.array(part)
    if dtype is not None:
        target = dtype_name(dtype)
        if out.dtype != np.dtype(target):
            with np.errstate(over="ignore"):
                out = out.astype(target)
    return np.ascontiguousarray(out)


class ChunkUploader:
    """Copies host chunks to the device; where the backend can, asynchronously, so that the copy
    of the next chunk overlaps with the compute on the current one.

    ``start(arrays)`` begins copying a tuple of host NumPy arrays and returns a handle;
    ``finish(handle)`` returns the device arrays, ready to be used by work queued after it.
    This synchronous version (numpy, torch CPU, array-api-strict, and every backend where no
    second stream exists) copies in ``start``; :func:`chunk_uploader` picks the right one.
    ``overlaps`` says which kind it is.
    """

    overlaps = False

    def __init__(self, xp: Any, device: Any) -> None:
        self.xp, self.device = xp, device

    def start(self, arrays: Sequence[Any]) -> Any:
        return tuple(None if a is None else asarray(a, xp=self.xp, device=self.device)
                     for a in arrays)

    def finish(self, handle: Any) -> tuple[Any, ...]:
        return tuple(handle)

    def close(self) -> None:
        """Wait for copies in flight and release the host buffers."""


class _CudaUploader(ChunkUploader):
    """The overlapping uploader, common to cupy and torch CUDA.

    Per chunk: each host array is copied into page-locked (pinned) host memory, a copy to the
    device is queued on a second stream, and an event is recorded after it. ``finish`` makes the
    compute stream wait for that event (a device-side wait: the host does not block). The pinned
    buffers of a chunk are kept until its copy is known to be done: at most ``depth`` chunks are
    in flight, and starting one more first waits, on the host, for the oldest copy's event —
    the only host wait per chunk, normally on a copy that finished long ago.
    """

    overlaps = True
    depth = 2

    def __init__(self, xp: Any, device: Any) -> None:
        super().__init__(xp, device)
        self.copy_stream = self._new_stream()
        self.in_flight: list[tuple[Any, list[Any]]] = []  # (event, pinned buffers)

    def start(self, arrays: Sequence[Any]) -> Any:
        while len(self.in_flight) >= self.depth:
            event, _ = self.in_flight.pop(0)
            event.synchronize()
        pinned = [None if a is None else self._pin(np.ascontiguousarray(a)) for a in arrays]
        out, event = self._copy(pinned)
        self.in_flight.append((event, pinned))
        return out, event

    def finish(self, handle: Any) -> tuple[Any, ...]:
        out, event = handle
        self._wait(event, out)
        return tuple(out)

    def close(self) -> None:
        for event, _ in self.in_flight:
            event.synchronize()
        self.in_flight.clear()

    # the library-specific parts
    def _new_stream(self) -> Any:
        raise NotImplementedError

    def _pin(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def _copy(self, pinned: list[Any]) -> tuple[list[Any], Any]:
        raise NotImplementedError

    def _wait(self, event: Any, out: list[Any]) -> None:
        raise NotImplementedError


class TorchCudaUploader(_CudaUploader):
    """torch CUDA: pinned tensors (``pin_memory=True``), ``Tensor.to(device, non_blocking=True)``
    under ``torch.cuda.stream(copy_stream)``, then ``current_stream.wait_event`` and
    ``record_stream`` (so the caching allocator does not reuse a chunk's memory while the
    compute stream still reads it). ``torch`` may be a stand-in module (tests use a fake)."""

    def __init__(self, xp: Any, device: Any, torch: Any = None) -> None:
        self.torch = importlib.import_module("torch") if torch is None else torch
        super().__init__(xp, device)

    def _new_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.device)

    def _pin(self, host: np.ndarray) -> Any:
        return self.torch.from_numpy(host).pin_memory()  # one copy, into page-locked memory

    def _copy(self, pinned: list[Any]) -> tuple[list[Any], Any]:
        torch = self.torch
        with torch.cuda.stream(self.copy_stream):
            out = [None if p is None else p.to(self.device, non_blocking=True) for p in pinned]
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return out, event

    def _wait(self, event: Any, out: list[Any]) -> None:
        current = self.torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in out:
            if t is not None:
                t.record_stream(current)


class CupyUploader(_CudaUploader):
    """cupy: ``cupyx.empty_pinned`` buffers, ``ndarray.set(pinned, stream=copy_stream)`` into
    arrays allocated on the target GPU, an event recorded on the copy stream, and
    ``get_current_stream().wait_event``. ``cupy``/``cupyx`` may be stand-ins (tests use fakes)."""

    def __init__(self, xp: Any, device: Any, cupy: Any = None, cupyx: Any = None) -> None:
        if cupy is None:
            cupy, cupyx = importlib.import_module("cupy"), importlib.import_module("cupyx")
        self.cupy, self.cupyx = cupy, cupyx
        super().__init__(xp, device)

    def _new_stream(self) -> Any:
        with self.cupy.cuda.Device(self.device):
            return self.cupy.cuda.Stream(non_blocking=True)

    def _pin(self, host: np.ndarray) -> Any:
        buffer = self.cupyx.empty_pinned(host.shape, dtype=host.dtype)
        buffer[...] = host
        return buffer

    def _copy(self, pinned: list[Any]) -> tuple[list[Any], Any]:
        cupy = self.cupy
        out: list[Any] = []
        with cupy.cuda.Device(self.device):
            for p in pinned:
                if p is None:
                    out.append(None)
                    continue
                dev = cupy.empty(p.shape, dtype=p.dtype)
                dev.set(p, stream=self.copy_stream)
                out.append(dev)
            event = self.copy_stream.record()
        return out, event

    def _wait(self, event: Any, out: list[Any]) -> None:
        with self.cupy.cuda.Device(self.device):
            self.cupy.cuda.get_current_stream().wait_event(event)


def chunk_uploader(xp: Any, device: Any) -> ChunkUploader:
    """The uploader for ``xp``/``device``: overlapping on cupy and torch CUDA, synchronous
    elsewhere. ``NNXP_SYNC_UPLOADS=1`` forces the synchronous one (to rule it out when
    debugging)."""
    if os.environ.get("NNXP_SYNC_UPLOADS", "") not in ("", "0"):
        return ChunkUploader(xp, device)
    name = _name_of_namespace(xp)
    if name == "cupy":
        return CupyUploader(xp, device)
    if name == "torch" and getattr(device, "type", str(device)) == "cuda":
        return TorchCudaUploader(xp, device)
    return ChunkUploader(xp, device)
