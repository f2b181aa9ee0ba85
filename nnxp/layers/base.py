"""The layer protocol, its base class, the layer registry and the errors every layer raises.

The layer protocol, which the model, the optimizers and users' own layers rely on:

* ``params``  — dict of trainable arrays;
* ``grads``   — dict with the same keys, overwritten by every ``backward``;
* ``buffers`` — dict of non-trainable state (e.g. running statistics);
* ``forward(x, *, training=True) -> y`` keeps what ``backward`` needs only when ``training``;
* ``backward(dy) -> dx`` fills ``grads``, drops the cache and returns ``∂L/∂x``. Calling it
  without a training-mode forward first raises :class:`BackwardError`;
* ``grad_views`` — optional dict: where an optimizer with flat buffers wants ``backward`` to
  write the gradient of ``key`` (a view into its flat gradient buffer, :mod:`nnxp.optim.flat`).
  A layer that honours it writes ``grads[key]`` into that array and stores that very array
  in ``grads``; a layer that ignores it stays correct (its new array is copied in at the
  optimizer's step, one copy);
* ``needs_input_grad`` — True by default. A model sets it to False on its first trainable
  layer for the duration of a training backward pass, whose ``∂L/∂x`` (the gradient with
  respect to the data) nobody reads; a layer may then skip that computation and return None.

A layer is bound to the backend (namespace and device) that was active when it was created.

Every module of :mod:`nnxp.layers` builds on this one and none of them on each other, except
:mod:`~nnxp.layers.core`, whose ``Dense`` takes an ``activation=`` and so imports
:mod:`~nnxp.layers.activations` (one way: activations import only this module).
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..random import Generator
from ..typing import Array
from ..validation import describe


class BackwardError(RuntimeError):
    """``backward`` was called without a preceding ``forward(..., training=True)``."""


LAYERS: dict[str, type[Layer]] = {}
"""Every layer class by its registry name (filled by ``Layer.__init_subclass__``); ``nnxp.load``
rebuilds saved layers from it."""


def layer_class_name(cls: type) -> str:
    """Registry name of a layer class: ``"Dense"`` for nnxp's own, ``"module.Qualname"`` else."""
    if cls.__module__.startswith("nnxp."):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


class Layer:
    """Base class: empty ``params``/``grads``/``buffers`` and the backend binding.

    Subclasses are registered by name in :data:`LAYERS` when they are defined, and describe
    their constructor arguments with :meth:`get_config`, so that ``model.save`` / ``nnxp.load``
    handle every layer that follows the protocol.
    """

    needs_input_grad: bool = True
    """Whether :meth:`backward` must return ``∂L/∂x`` (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LAYERS[layer_class_name(cls)] = cls

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments as a JSON-serialisable dict: ``type(self)(**config)``
        rebuilds the layer (its arrays are then restored from ``params`` and ``buffers``)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """The inverse of :meth:`get_config`: a fresh layer on the active backend."""
        return cls(**config)

    def __init__(self) -> None:
        info = backend.get_backend()
        self.xp = info.xp
        self.device = info.device
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.grad_views: dict[str, Array] = {}
        self._cache: Any = None

    def forward(self, x: Array, *, training: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array, *, training: bool = False) -> Array:
        return self.forward(x, training=training)

    def reset_parameters(self, rng: Generator) -> None:
        """Draw fresh parameters from ``rng`` (layers without parameters do nothing)."""

    @property
    def has_penalty(self) -> bool:
        """Whether :meth:`penalty` can be non-zero (lets the model skip the others)."""
        return False

    def penalty(self) -> Array:
        """The layer's weight penalty, added to the loss: a 0-d array (0 for most layers)."""
        dtype = next(iter(self.params.values())).dtype if self.params else self.xp.float32
        return self.xp.zeros((), dtype=dtype, device=self.device)

    def apply_constraints(self) -> None:
        """Project parameters back onto their constraints; the model calls it after each
        optimizer step (a no-op for layers without constraints)."""

    def clear_cache(self) -> None:
        """Drop what the last training-mode forward kept for backward (loading or moving a
        layer does this: a cache from before would not match the new weights or device)."""
        self._cache = None

    def moved_to(self, xp: Any, device: Any) -> None:
        """Called by :meth:`Sequential.to` after the layer's arrays moved to ``xp``/``device``:
        a layer that holds other backend-bound objects rebuilds them here (a no-op by
        default)."""

    def _take_cache(self) -> Any:
        cache, self._cache = self._cache, None
        if cache is None:
            raise BackwardError(
                f"{type(self).__name__}.backward() needs a forward(x, training=True) first: "
                "the forward pass in evaluation mode (training=False) keeps nothing to "
                "differentiate, and each backward consumes the cache of one forward"
            )
        return cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def input_error(layer: Layer, x: Any, width: int, exc: BaseException) -> Exception:
    """The error for an input a layer's kernel rejected: what was expected, what arrived."""
    W = layer.params["W"]
    expected = (f"{type(layer).__name__}.forward expects x of shape (batch, {width}), "
                f"{backend.dtype_name(W.dtype)}, on the layer's backend "
                f"({backend.backend_name_of(W)})")
    shape = getattr(x, "shape", None)
    kind = ValueError if shape is not None and tuple(shape)[-1:] != (width,) else TypeError
    return kind(f"{expected}, got {describe(x)} ({type(exc).__name__}: {exc}); convert "
                "inputs with nnxp.asarray, or use model.predict, which checks them")
