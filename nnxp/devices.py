"""Moving a model, with its optimizer state, to another backend or device in place.

:func:`nnxp.backend.asarray` moves one array; :func:`move` walks a model: every array of every
layer, dtype attributes, the layers' random generators and the optimizer's state. It is what
:meth:`Sequential.to <nnxp.model.Sequential.to>` runs, and works on any object with the model
protocol (``layers``, ``xp``, ``device``, ``dtype``, ``parameters()``, ``optimizer``), so this
module does not import :mod:`nnxp.model`.
"""

from __future__ import annotations

from typing import Any

from . import backend
from .random import BackendGenerator

__all__ = ["move"]


def move(model: Any, backend_name: str | Any, device: Any = None) -> Any:
    """Move ``model`` (parameters, gradients, buffers) and its optimizer state in place.

    Every array attribute of every layer moves to the new namespace and device, and so do the
    layers a layer holds (``Dense``'s ``activation``, walked recursively); dtype attributes are
    re-resolved in the new namespace; caches of a pending backward are dropped; each
    :class:`~nnxp.random.BackendGenerator` is replaced by one on the new backend that continues
    from a seed drawn from the old stream.
    Layers holding other backend-bound objects rebuild them in their ``moved_to(xp, device)``
    hook (:meth:`nnxp.layers.Layer.moved_to`). The optimizer's ``state_dict()`` is taken
    before and loaded back after rebinding.

    Parameters
    ----------
    model
        A :class:`~nnxp.model.Sequential` (or any object with its ``layers``, ``xp``,
        ``device``, ``dtype``, ``parameters()`` and ``optimizer``).
    backend_name, device
        Where to go, as :func:`nnxp.use_backend` takes them: ``"torch", "cuda"``,
        ``"array_api_strict:device1"``, a namespace.

    Returns
    -------
    object
        ``model`` itself, moved.
    """
    with backend.use_backend(backend_name, device) as info:
        xp, dev = info.xp, info.device
    opt: Any = getattr(model, "optimizer", None)
    with backend.device_scope(model.xp, model.device):
        opt_state = opt.state_dict() if callable(getattr(opt, "state_dict", None)) else None
    with backend.device_scope(xp, dev):  # CuPy: whatever is created lands on the target GPU
        seen: set[int] = set()
        for layer in model.layers:
            _move_object(layer, xp, dev, seen)
        model.xp, model.device = xp, dev
        model.dtype = backend.resolve_dtype(backend.dtype_name(model.dtype), xp)
        if opt is not None:
            iterations = getattr(opt, "iterations", 0)
            opt.bind(model.parameters())
            if opt_state is not None:
                opt.load_state_dict(opt_state)
            opt.iterations = iterations
    return model


def _is_layer(value: Any) -> bool:
    return (not isinstance(value, type) and isinstance(getattr(value, "params", None), dict)
            and callable(getattr(value, "forward", None)))


def _move_object(layer: Any, xp: Any, device: Any, seen: set[int]) -> None:
    if id(layer) in seen:  # a layer reachable twice moves once
        return
    seen.add(id(layer))
    for name in ("params", "grads", "buffers"):
        store = getattr(layer, name, None)
        if isinstance(store, dict):
            for key, value in store.items():
                store[key] = backend.asarray(value, xp=xp, device=device)
    views = getattr(layer, "grad_views", None)
    if isinstance(views, dict):  # views into an optimizer's flat buffers on the old device
        views.clear()
    for name, value in list(vars(layer).items()):
        if name in ("xp", "device", "params", "grads", "buffers", "grad_views") \
                or value is None:
            continue
        if name == "dtype" or name.endswith("_dtype"):
            if not isinstance(value, str):
                setattr(layer, name, backend.resolve_dtype(backend.dtype_name(value), xp))
        elif not isinstance(value, type) and backend.is_array(value):
            setattr(layer, name, backend.asarray(value, xp=xp, device=device))
        elif isinstance(value, BackendGenerator):  # continue from a seed drawn from the old one
            with backend.device_scope(value.xp, value.device):
                seed = int(backend.to_float(value.uniform((1,), "float64")[0]) * (2**63 - 1))
            setattr(layer, name, BackendGenerator(seed, xp, device))
        elif _is_layer(value):  # a nested layer: Dense's activation
            _move_object(value, xp, device, seen)
        elif isinstance(value, (list, tuple)) and any(_is_layer(v) for v in value):
            for item in value:
                if _is_layer(item):
                    _move_object(item, xp, device, seen)
    clear = getattr(layer, "clear_cache", None)
    if callable(clear):
        clear()
    layer.xp, layer.device = xp, device
    hook = getattr(layer, "moved_to", None)
    if callable(hook):
        hook(xp, device)
